"""nanoocr.inputs: every image format and colour mode to RGB, PDFs page by page, folders and stdin, and a
clear error naming the input for each kind of bad file. Small generated files only."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from nanoocr import inputs
from nanoocr.inputs import Failure, InputError, Page, iter_pages, load_image, pdf_page_count, pdf_pages


def rgb(size=(40, 30), color=(200, 30, 30)):
    return Image.new("RGB", size, color)


def png_bytes(im):
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def make_pdf(path, n=3, size=(100, 130)):
    pages = [rgb(size, (40 * i, 100, 200)) for i in range(n)]
    pages[0].save(path, save_all=True, append_images=pages[1:])
    return path


def raw_pdf(objects, trailer=b""):
    """A minimal PDF with a correct xref table, from object bodies numbered 1, 2, ..."""
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (i, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R %s >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, trailer, xref)
    return bytes(out)


PAGE_OBJECTS = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 72 72] >>"]


def encrypted_pdf():
    # the standard security handler with a user password: PDFium cannot open it without the password
    encrypt = b"<< /Filter /Standard /V 1 /R 2 /O <" + b"11" * 32 + b"> /U <" + b"22" * 32 + b"> /P -4 >>"
    return raw_pdf(PAGE_OBJECTS + [encrypt], b"/Encrypt 4 0 R /ID [<" + b"ab" * 16 + b"> <" + b"ab" * 16 + b">]")


def png_claiming(width, height):
    """A PNG header for a width x height image with no pixel data: what a decompression bomb looks like."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def error_of(fn, *args, **kw):
    with pytest.raises(InputError) as e:
        fn(*args, **kw)
    return str(e.value)


# ----------------------------------------------------------------------------------------------
# images


@pytest.mark.parametrize("ext,kw", [("png", {}), ("jpg", {"quality": 95}), ("jpeg", {}), ("webp", {"lossless": True}),
                                    ("tiff", {}), ("bmp", {}), ("gif", {})])
def test_formats(tmp_path, ext, kw):
    path = tmp_path / f"a.{ext}"
    rgb().save(path, **kw)
    for src in (path, str(path), path.read_bytes()):
        im = load_image(src)
        assert im.mode == "RGB" and im.size == (40, 30)
        r, g, b = im.getpixel((20, 15))
        assert abs(r - 200) < 12 and g < 45 and b < 45


def test_animated_gif_gives_its_first_frame(tmp_path):
    path = tmp_path / "anim.gif"
    rgb(color=(255, 0, 0)).save(path, save_all=True, append_images=[rgb(color=(0, 0, 255))], duration=100)
    assert load_image(path).getpixel((5, 5)) == (255, 0, 0)


def test_alpha_and_palette_transparency_become_white(tmp_path):
    rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    rgba.paste((10, 20, 30, 255), (0, 0, 10, 20))
    im = load_image(png_bytes(rgba))
    assert im.mode == "RGB" and im.getpixel((15, 5)) == (255, 255, 255) and im.getpixel((5, 5)) == (10, 20, 30)

    la = Image.new("LA", (20, 20), (0, 0))
    assert load_image(png_bytes(la)).getpixel((3, 3)) == (255, 255, 255)

    pal = Image.new("P", (20, 20), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.paste(1, (0, 0, 10, 20))
    pal.info["transparency"] = 0
    im = load_image(png_bytes(pal))
    assert im.getpixel((5, 5)) == (255, 0, 0) and im.getpixel((15, 5)) == (255, 255, 255)


def test_sixteen_bit_grey_is_scaled_not_clipped():
    a = np.full((10, 12), 30000, dtype=np.uint16)
    a[:, 6:] = 65535
    im = load_image(png_bytes(Image.fromarray(a)))
    assert im.mode == "RGB"
    assert abs(im.getpixel((2, 2))[0] - 30000 / 257) <= 1 and im.getpixel((9, 2)) == (255, 255, 255)


def test_cmyk_and_greyscale():
    buf = io.BytesIO()
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(buf, "JPEG", quality=95)
    r, g, b = load_image(buf.getvalue()).getpixel((8, 8))
    assert r > 200 and g < 60 and b < 60
    assert load_image(png_bytes(Image.new("L", (8, 8), 77))).getpixel((1, 1)) == (77, 77, 77)
    assert load_image(png_bytes(Image.new("1", (8, 8), 1))).getpixel((1, 1)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    im = rgb((40, 20))
    im.paste((0, 0, 255), (0, 0, 10, 20))  # blue on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display it turned 90 degrees clockwise
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif, quality=95)
    out = load_image(buf.getvalue())
    assert out.size == (20, 40)
    r, g, b = out.getpixel((10, 3))  # the left edge is now the top
    assert b > 200 and r < 60


def test_bad_images_name_the_file(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert error_of(load_image, empty) == f"{empty}: empty file"
    assert error_of(load_image, b"", name="upload.png") == "upload.png: empty file"

    notes = tmp_path / "notes.txt"
    notes.write_text("just some text\n")
    assert "notes.txt: not an image" in error_of(load_image, notes)

    cut = tmp_path / "cut.png"
    cut.write_bytes(png_bytes(rgb((64, 64)))[:70])
    message = error_of(load_image, cut)
    assert message.startswith(f"{cut}: ") and "truncated" in message

    assert "no such file" in error_of(load_image, tmp_path / "missing.png")
    assert "folder" in error_of(load_image, tmp_path)
    assert "not an image" in error_of(load_image, b"%PDF-1.4 not an image", name="x.pdf")


def test_decompression_bombs_are_refused_before_decoding(monkeypatch):
    message = error_of(load_image, png_claiming(30_000, 30_000), name="bomb.png")  # 900 MP: over PIL's limit too
    assert message.startswith("bomb.png: image too large") and "900,000,000 pixels" in message
    message = error_of(load_image, png_claiming(8000, 8000), name="big.png")  # 64 MP: only over ours
    assert "64,000,000 pixels" in message and f"{inputs.MAX_PIXELS:,}" in message
    monkeypatch.setattr(inputs, "MAX_PIXELS", 100)
    assert "image too large" in error_of(load_image, png_bytes(rgb((20, 20))), name="small.png")
    assert load_image(png_bytes(rgb((10, 10)))).size == (10, 10)
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS > 100  # PIL's own limit untouched


# ----------------------------------------------------------------------------------------------
# PDFs


def test_pdf_pages_one_at_a_time(tmp_path):
    path = make_pdf(tmp_path / "doc.pdf", 3)
    assert pdf_page_count(path) == 3 and pdf_page_count(path.read_bytes()) == 3
    pages = list(pdf_pages(path, dpi=72))
    assert [p.page for p in pages] == [1, 2, 3] and all(p.source == str(path) for p in pages)
    assert all(p.image.mode == "RGB" and p.image.size == (100, 130) for p in pages)
    assert pages[1].image.getpixel((50, 60))[0] > pages[0].image.getpixel((50, 60))[0]  # the pages differ
    twice = list(pdf_pages(path.read_bytes(), name="up.pdf", dpi=144, max_pages=2))
    assert [p.page for p in twice] == [1, 2] and twice[0].image.size == (200, 260) and twice[0].source == "up.pdf"


def test_huge_pdf_page_is_rendered_smaller(monkeypatch):
    monkeypatch.setattr(inputs, "MAX_PIXELS", 10_000)
    (page,) = pdf_pages(raw_pdf(PAGE_OBJECTS), name="poster.pdf", dpi=600)
    w, h = page.image.size
    assert w * h <= 10_000 * 1.05 and abs(w - h) <= 1  # a square page stays square


def test_bad_pdfs_name_the_file(tmp_path):
    data = make_pdf(tmp_path / "doc.pdf").read_bytes()
    for cut in (data[:200], data[: len(data) // 2]):
        message = error_of(pdf_page_count, cut, name="cut.pdf")
        assert message.startswith("cut.pdf: corrupt")
        assert error_of(list, pdf_pages(cut, name="cut.pdf")).startswith("cut.pdf: ")
    message = error_of(pdf_page_count, encrypted_pdf(), name="secret.pdf")
    assert message.startswith("secret.pdf: encrypted")
    assert "no such file" in error_of(pdf_page_count, tmp_path / "missing.pdf")


def test_a_page_that_fails_to_render(tmp_path, monkeypatch):
    path = make_pdf(tmp_path / "doc.pdf", 3)
    real = inputs._render

    def render(doc, index, dpi):
        if index == 1:
            raise RuntimeError("bad page")
        return real(doc, index, dpi)

    monkeypatch.setattr(inputs, "_render", render)
    it = pdf_pages(path)
    assert next(it).page == 1
    assert error_of(next, it) == f"{path}: page 2 could not be rendered (RuntimeError: bad page)"
    items = list(iter_pages([str(path)]))  # iter_pages goes on past the bad page
    assert [type(i).__name__ for i in items] == ["Page", "Failure", "Page"]
    assert items[1].source == str(path) and "page 2" in items[1].error and items[2].page == 3


# ----------------------------------------------------------------------------------------------
# iter_pages


def test_iter_pages_order_folders_and_failures(tmp_path):
    rgb().save(tmp_path / "one.png")
    make_pdf(tmp_path / "doc.pdf", 2)
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    rgb().save(folder / "b.jpg")
    rgb().save(folder / "sub" / "a.webp")
    rgb().save(folder / "A.PNG")
    rgb().save(folder / ".hidden" / "x.png")
    rgb().save(folder / "._b.png")
    (folder / "readme.txt").write_text("not a page")  # ignored in a folder
    make_pdf(folder / "sub" / "z.pdf", 2)
    notes = tmp_path / "notes.txt"
    notes.write_text("named directly: a failure")
    disguised = tmp_path / "scan.dat"  # a PDF is known by its first bytes, not its name
    disguised.write_bytes((tmp_path / "doc.pdf").read_bytes())

    args = [tmp_path / "one.png", str(tmp_path / "missing.png"), str(tmp_path / "doc.pdf"), str(folder), str(notes),
            str(disguised)]
    items = list(iter_pages(args, dpi=72))
    got = [(type(i).__name__, i.source.replace(str(tmp_path), "T"), getattr(i, "page", None)) for i in items]
    assert got == [("Page", "T/one.png", 1), ("Failure", "T/missing.png", None),
                   ("Page", "T/doc.pdf", 1), ("Page", "T/doc.pdf", 2),
                   ("Page", "T/folder/A.PNG", 1), ("Page", "T/folder/b.jpg", 1), ("Page", "T/folder/sub/a.webp", 1),
                   ("Page", "T/folder/sub/z.pdf", 1), ("Page", "T/folder/sub/z.pdf", 2),
                   ("Failure", "T/notes.txt", None), ("Page", "T/scan.dat", 1), ("Page", "T/scan.dat", 2)]
    assert items[1].error == "no such file or folder" and "not an image" in items[-3].error
    assert all(i.image.mode == "RGB" for i in items if isinstance(i, Page))
    assert [p.page for p in iter_pages([str(tmp_path / "doc.pdf")], max_pages=1)] == [1]


def test_stdin(tmp_path):
    (page,) = iter_pages(["-"], stdin=io.BytesIO(png_bytes(rgb())))
    assert page.source == "<stdin>" and page.page == 1 and page.image.size == (40, 30)
    pdf = make_pdf(tmp_path / "doc.pdf", 2).read_bytes()
    assert [p.page for p in iter_pages(["-"], stdin=io.BytesIO(pdf))] == [1, 2]
    items = list(iter_pages(["-", "-"], stdin=io.BytesIO(b"")))
    assert items == [Failure("<stdin>", "empty file"), Failure("<stdin>", "stdin was already read")]
    assert list(iter_pages(["-"])) == [Failure("<stdin>", "no stdin to read")]


def test_bad_files_in_a_folder_do_not_stop_the_others(tmp_path):
    rgb().save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(png_bytes(rgb((64, 64)))[:70])
    (tmp_path / "c.png").write_bytes(b"")
    (tmp_path / "d.pdf").write_bytes(encrypted_pdf())
    rgb().save(tmp_path / "e.png")
    items = list(iter_pages([tmp_path]))
    assert [type(i).__name__ for i in items] == ["Page", "Failure", "Failure", "Failure", "Page"]
    assert "truncated" in items[1].error and items[2].error == "empty file" and "encrypted" in items[3].error
