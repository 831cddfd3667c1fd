"""
What `nanoocr ocr` and `nanoocr serve` read: image files, PDFs, folders and stdin, turned into RGB pages.

    for item in iter_pages(["scan.pdf", "photos/", "-"], stdin=sys.stdin.buffer):
        ...  # a Page(source, page, image), or a Failure(source, error) for an input that could not be read

Every problem with an input is an InputError whose message names the input and says what is wrong with it
("notes.txt: not an image ...", "scan.pdf: encrypted (password-protected) PDF"); iter_pages turns these into
Failures so one bad input never stops the others. Limits guard against hostile files: an image over MAX_PIXELS
is refused before it is decoded, and a PDF page is rendered at a lower resolution if `dpi` would exceed it.
PDF pages are rendered one at a time, so a long PDF never holds more than one page image in memory.
Nothing waits forever or reads without end: a FIFO or device inside a folder is reported and skipped, and
stdin (or a FIFO given by name) is read up to MAX_STREAM_BYTES.
"""

import io
import math
import os
import re
import stat
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 50_000_000  # 50 MP: an A4 page at 600 dpi is 35 MP
MAX_STREAM_BYTES = 256 << 20  # stdin or a pipe: read at most this much (a 600 dpi A4 PNG is ~100 MB)
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif")
PDF_EXTS = (".pdf",)
# the decoders we accept: fewer decoders, less attack surface (JPEG's also opens cameras' multi-picture JPEGs)
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF")
STDIN_SOURCE = "<stdin>"
PDF_MAGIC = b"%PDF-"
_PDFIUM = threading.Lock()  # PDFium is not thread-safe, and the web app reads uploads on a thread pool


class InputError(ValueError):
    """An input that cannot be read. str(e) names the input; `problem` is the same without the name."""

    def __init__(self, message, source=None, problem=None):
        super().__init__(message)
        self.source, self.problem = source, problem or message


def _error(name, problem):
    return InputError(f"{name}: {problem}", source=name, problem=problem)


@dataclass
class Page:
    source: str  # the input as given (for a folder's file: that file's path)
    page: int  # 1-based
    image: Image.Image  # RGB


@dataclass
class Failure:
    source: str
    error: str  # what went wrong, without the source's name


def _name(data_or_path, name):
    if name is not None:
        return str(name)
    return "<bytes>" if isinstance(data_or_path, (bytes, bytearray)) else str(data_or_path)


def _os_problem(e):
    if isinstance(e, FileNotFoundError):
        return "no such file or folder"
    if isinstance(e, IsADirectoryError):
        return "is a folder, not a file"
    if isinstance(e, PermissionError):
        return "permission denied"
    return f"cannot read it: {e.strerror or e}"


# ----------------------------------------------------------------------------------------------
# images


def load_image(data_or_path, name=None):
    """Image bytes or path -> a fully decoded RGB PIL image, upright per its EXIF orientation. InputError if
    it is empty, not a supported image, truncated or corrupt, or over MAX_PIXELS."""
    name = _name(data_or_path, name)
    is_bytes = isinstance(data_or_path, (bytes, bytearray))
    try:
        if (len(data_or_path) if is_bytes else os.path.getsize(data_or_path)) == 0:
            raise _error(name, "empty file")
        src = io.BytesIO(data_or_path) if is_bytes else data_or_path
        with warnings.catch_warnings():
            # PIL warns (with its install path) for 89-179 MP images; as an error it becomes our own message
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(src, formats=IMAGE_FORMATS) as im:
                _check_pixels(name, *im.size)
                im.load()  # decode now: a truncated file fails here rather than in the model
                return to_rgb_page(im, name)
    except InputError:
        raise
    except OSError as e:
        if isinstance(e, UnidentifiedImageError):
            raise _error(name, "not an image, or not a supported format (PNG, JPEG, WebP, TIFF, BMP, GIF)") from None
        if e.errno is not None:  # the file system's error, not the decoder's
            raise _error(name, _os_problem(e)) from None
        raise _error(name, f"corrupt or truncated image ({e})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # PIL's own, higher limit tripped in Image.open, before our check could run
        m = re.search(r"\((\d+) pixels\)", str(e))
        raise _error(name, _too_large(int(m.group(1))) if m else f"image too large ({e})") from None
    except Exception as e:  # decoders raise SyntaxError, ValueError, struct.error, ... on bad data
        raise _error(name, f"corrupt or truncated image ({type(e).__name__}: {e})") from None


def to_rgb_page(im, name="image"):
    """An opened PIL image -> RGB the way every page is read: upright per EXIF, transparency on white."""
    return _to_rgb(name, _upright(im))


def _too_large(pixels):
    return f"image too large: {pixels:,} pixels is over the limit of {MAX_PIXELS:,}"


def _check_pixels(name, width, height):
    if width * height > MAX_PIXELS:
        raise _error(name, _too_large(width * height))


def _upright(im):
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # a broken EXIF block should not lose the picture: read it as stored
        return im


def _to_rgb(name, im):
    """Any mode -> RGB: transparency composited on white, 16-bit and float greys scaled to 8 bits."""
    if im.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        return _grey_to_rgb(im)
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return im.convert("RGB")
    except ValueError as e:
        raise _error(name, f"unsupported colour mode {im.mode} ({e})") from None


def _grey_to_rgb(im):
    import numpy as np
    a = np.asarray(im, dtype=np.float32)
    hi = float(a.max()) if a.size else 0.0
    if im.mode.startswith("I;16") or hi > 255:
        a = a * (255 / 65535) if hi <= 65535 else a * (255 / hi)
    elif im.mode == "F" and hi <= 1:  # floats in 0..1
        a = a * 255
    grey = Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8))
    return grey.convert("RGB")


# ----------------------------------------------------------------------------------------------
# PDFs


def _open_pdf(data_or_path, name):
    import pypdfium2 as pdfium
    src = bytes(data_or_path) if isinstance(data_or_path, (bytes, bytearray)) else Path(data_or_path)
    try:
        with _PDFIUM:
            return pdfium.PdfDocument(src)
    except OSError as e:
        raise _error(name, _os_problem(e)) from None
    except pdfium.PdfiumError as e:
        if e.err_code in (pdfium.raw.FPDF_ERR_PASSWORD, pdfium.raw.FPDF_ERR_SECURITY):
            raise _error(name, "encrypted (password-protected) PDF; decrypt it first") from None
        raise _error(name, f"corrupt, truncated or empty PDF ({e})") from None


def _close(doc):
    with _PDFIUM:
        doc.close()


def pdf_page_count(data_or_path, name=None):
    """The number of pages of a PDF (bytes or path). InputError if it cannot be opened."""
    name = _name(data_or_path, name)
    doc = _open_pdf(data_or_path, name)
    try:
        with _PDFIUM:
            return len(doc)
    finally:
        _close(doc)


def _pdf_items(data_or_path, name, dpi, max_pages):
    """(page number, RGB image or InputError) for each page. Opening errors raise; a page that fails to
    render is handed on as an error so the caller decides whether the pages after it are still read."""
    doc = _open_pdf(data_or_path, name)
    try:
        with _PDFIUM:
            n = len(doc)
        for i in range(n if max_pages is None else min(n, max_pages)):
            try:
                with _PDFIUM:  # released between pages: the consumer works on one page while others render
                    image = _render(doc, i, dpi)
            except Exception as e:
                yield i + 1, _error(name, f"page {i + 1} could not be rendered ({type(e).__name__}: {e})")
                continue
            yield i + 1, image
    finally:
        _close(doc)


def _scale(w, h, dpi):
    scale = dpi / 72
    if w * h * scale * scale > MAX_PIXELS:  # a poster-sized page: render it smaller, not out of memory
        scale = math.sqrt(MAX_PIXELS / (w * h))
    return scale


def pdf_page_pixels(data_or_path, name=None, dpi=144, max_pages=None):
    """Pixels of each page (the first `max_pages`) as it would be rendered at `dpi`, from the page sizes
    alone: what a PDF will cost in memory, known before any page is rendered."""
    name = _name(data_or_path, name)
    doc = _open_pdf(data_or_path, name)
    out = []
    try:
        with _PDFIUM:
            for i in range(len(doc) if max_pages is None else min(len(doc), max_pages)):
                try:
                    w, h = doc.get_page_size(i)
                except Exception:
                    w = h = 0  # a broken page fails when rendered, with its own error
                scale = _scale(w, h, dpi) if w > 0 and h > 0 else 0
                out.append(int(w * scale) * int(h * scale))
    finally:
        _close(doc)
    return out


def _render(doc, index, dpi):
    page = doc[index]
    try:
        w, h = page.get_size()  # points, 1/72 inch
        if not (w > 0 and h > 0):
            raise ValueError(f"page size {w} x {h} points")
        bitmap = page.render(scale=_scale(w, h, dpi))
        try:
            # to_pil may share the bitmap's buffer, which close() frees: copy it out first
            return bitmap.to_pil().convert("RGB").copy()
        finally:
            bitmap.close()
    finally:
        page.close()


def pdf_pages(data_or_path, name=None, dpi=144, max_pages=None):
    """Page after page of a PDF (bytes or path) rendered at `dpi`, at most `max_pages` of them; InputError
    if it cannot be opened or a page cannot be rendered."""
    name = _name(data_or_path, name)
    for n, item in _pdf_items(data_or_path, name, dpi, max_pages):
        if isinstance(item, InputError):
            raise item
        yield Page(name, n, item)


# ----------------------------------------------------------------------------------------------
# inputs -> pages


def _is_pdf(head):
    # PDF readers accept the header anywhere in the first KB
    return PDF_MAGIC in head[:1024]


def _folder_files(folder):
    """Supported files under `folder`, recursively, sorted; hidden files and folders (.git, macOS ._x.png
    resource forks) are skipped, as is everything else that is not an image or a PDF."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [os.path.join(dirpath, f) for f in filenames
                  if not f.startswith(".") and f.lower().endswith(IMAGE_EXTS + PDF_EXTS)]
    return sorted(found)


def _folder_items(folder, dpi, max_pages):
    for path in _folder_files(folder):
        if _regular(path):
            yield from _read_one(path, path, dpi, max_pages)
        else:  # opening a FIFO blocks until something writes to it: never in a folder walk
            yield Failure(path, "not a regular file (a FIFO, socket or device); skipped")


def _regular(path):
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return True  # let the read report the error


def read_stream(f, source, limit=None):
    """All bytes of a stream (stdin, a pipe), at most `limit` (default MAX_STREAM_BYTES): InputError past it."""
    limit = MAX_STREAM_BYTES if limit is None else limit
    data = f.read(limit + 1)
    if len(data) > limit:
        raise _error(source, f"more than {limit / (1 << 20):g} MB; save it to a file and pass the file")
    return data


def _read_one(data_or_path, source, dpi, max_pages):
    """Pages and Failures of one image or PDF, given as bytes or as a file path."""
    try:
        if not isinstance(data_or_path, bytes) and not _regular(data_or_path):
            # a FIFO (e.g. <(cmd)) or a device: read it once, with a bound, as stdin is read
            with open(data_or_path, "rb") as f:
                data_or_path = read_stream(f, source)
        if isinstance(data_or_path, bytes):
            head = data_or_path[:1024]
        else:
            with open(data_or_path, "rb") as f:
                head = f.read(1024)
        if not head:
            raise _error(source, "empty file")
        if not _is_pdf(head):
            yield Page(source, 1, load_image(data_or_path, name=source))
            return
        for n, item in _pdf_items(data_or_path, source, dpi, max_pages):
            yield Failure(source, item.problem) if isinstance(item, InputError) else Page(source, n, item)
    except InputError as e:
        yield Failure(source, e.problem)
    except OSError as e:
        yield Failure(source, _os_problem(e))


def iter_pages(inputs, dpi=144, max_pages=None, stdin=None):
    """Page or Failure for every page of every input, in input order and page order. An input is an image
    or PDF file, a folder (its images and PDFs, recursively, in sorted order) or "-": all of `stdin`'s bytes.
    `max_pages` caps each PDF."""
    stdin_read = False
    for item in inputs:
        item = str(item)
        if item == "-":
            if stdin is None or stdin_read:
                yield Failure(STDIN_SOURCE, "stdin was already read" if stdin_read else "no stdin to read")
                continue
            stdin_read = True
            try:
                data = read_stream(stdin, STDIN_SOURCE)
            except InputError as e:
                yield Failure(STDIN_SOURCE, e.problem)
                continue
            yield from _read_one(data, STDIN_SOURCE, dpi, max_pages)
        elif os.path.isdir(item):
            yield from _folder_items(item, dpi, max_pages)
        elif not os.path.exists(item):
            yield Failure(item, "no such file or folder")
        else:
            yield from _read_one(item, item, dpi, max_pages)
