"""nanoocr.grounding: the strict parser on well-formed and hostile model text, the round trip with the synthetic
generator's grounded markdown, and the drawings, crops and markdown made from the blocks."""

import builtins

import pytest
from PIL import Image

from nanoocr import synth
from nanoocr.grounding import (
    Block,
    crop_figures,
    draw_boxes,
    figure_boxes,
    parse_boxes,
    parse_grounded,
    to_markdown,
    to_pixels,
)

PAGE = ("<|ref|>title<|/ref|><|det|>[[100, 50, 900, 200]]<|/det|>\n# A heading\n\n"
        "<|ref|>text<|/ref|><|det|>[[100, 220, 900, 400]]<|/det|>\nSome *body* text.\n\n"
        "<|ref|>image<|/ref|><|det|>[[100, 450, 600, 900]]<|/det|>\n\n"
        "<|ref|>image_caption<|/ref|><|det|>[[100, 910, 600, 990]]<|/det|>\nFigure 1: a chart\n")


def test_well_formed_page():
    blocks, plain = parse_grounded(PAGE)
    assert [b.label for b in blocks] == ["title", "text", "image", "image_caption"]
    assert blocks[0].boxes == [(100, 50, 900, 200)] and blocks[3].boxes == [(100, 910, 600, 990)]
    assert [b.text.strip() for b in blocks] == ["# A heading", "Some *body* text.", "", "Figure 1: a chart"]
    assert "<|" not in plain and "# A heading" in plain and "Figure 1: a chart" in plain
    assert plain == "".join(b.text for b in blocks)


def test_several_boxes_and_spacing():
    text = "<|ref|>text<|/ref|> <|det|>[ [0,0,10,10] ,[ 5 , 6 , 7 , 8 ],[999, 999, 999, 999]]<|/det|>two places"
    (block,), plain = parse_grounded(text)
    assert block.boxes == [(0, 0, 10, 10), (5, 6, 7, 8), (999, 999, 999, 999)] and plain == "two places"


def test_no_grounding_is_unchanged():
    for text in ["", "plain words", "# Title\n\n| a | b |\n|---|---|\n| 1 | 2 |\n", "[[1, 2, 3, 4]] is a list"]:
        assert parse_grounded(text) == ([], text)
        assert to_markdown([], text) == text


@pytest.mark.parametrize("det", [
    "[[1, 2, 3]]", "[[1, 2, 3, 4, 5]]", "[[1, 2, 3<", "[1, 2, 3, 4]", "[[1, 2, 3, 4]", "[[1, 2, 3, 4],]",
    "[]", "[[]]", "[[-1, 2, 3, 4]]", "[[1.5, 2, 3, 4]]", "[[1, 2, 3, 1000]]", "[[500, 2, 400, 4]]",
    "[[1, 500, 3, 400]]", "[[1e2, 2, 3, 4]]", "[[0x1, 2, 3, 4]]", "[[\u0661, 2, 3, 4]]", "[[1, 2, 3, 9999999999999]]",
    "[[__import__('os').system('echo hi'), 0, 1, 1]]", "[[1, 2, 3, 4]] + [[5, 6, 7, 8]]", "", "x",
])
def test_malformed_det_stays_text(det):
    text = f"before\n<|ref|>text<|/ref|><|det|>{det}<|/det|>\nbroken grounding stays text"
    blocks, plain = parse_grounded(text)
    assert blocks == []
    assert plain == f"before\ntext{det}\nbroken grounding stays text"  # only the markers go
    assert "broken grounding stays text" in to_markdown(blocks, plain)


def test_parser_never_evaluates(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the parser evaluated model output")

    monkeypatch.setattr(builtins, "eval", refuse)
    monkeypatch.setattr(builtins, "exec", refuse)
    text = "<|ref|>x<|/ref|><|det|>[[__import__('os').getpid(), 1, 2, 3]]<|/det|>after"
    blocks, plain = parse_grounded(text)
    assert blocks == [] and "__import__('os')" in plain
    assert parse_boxes("[[1, 2, 3, 4]]") == [(1, 2, 3, 4)]


def test_malformed_among_good_blocks():
    text = ("intro line\n"
            "<|ref|>title<|/ref|><|det|>[[100, 50, 900, 200]]<|/det|>\n# A heading\n\n"
            "<|ref|>text<|/ref|><|det|>[[1, 2, 3<|/det|>\nbroken grounding stays text\n\n"
            "<|ref|>text<|/ref|><|det|>[[10, 20, 30, 40]]<|/det|>\nlast\n"
            "<|ref|>text<|/ref|><|det|>[[10, 20, 30, 40]]")  # unterminated at the end
    blocks, plain = parse_grounded(text)
    assert [(b.label, b.boxes) for b in blocks] == [("title", [(100, 50, 900, 200)]), ("text", [(10, 20, 30, 40)])]
    assert "broken grounding stays text" in blocks[0].text and "<|" not in plain
    md = to_markdown(blocks, plain)
    assert md.startswith("intro line\n\n# A heading") and "broken grounding stays text" in md
    assert md.index("# A heading") < md.index("broken grounding") < md.index("last")
    assert "<|" not in md and "text[[10, 20, 30, 40]]" in md  # the unterminated header is kept as text


def test_bare_ref_and_locate_answers():
    blocks, plain = parse_grounded("Locate <|ref|>the cat<|/ref|> in the image.")
    assert blocks == [] and plain == "Locate the cat in the image."
    (block,), plain = parse_grounded("<|ref|>the cat<|/ref|><|det|>[[10, 20, 300, 400]]<|/det|>")
    assert block == Block("the cat", [(10, 20, 300, 400)], "") and plain == ""


def test_unicode_labels_and_text():
    text = "<|ref|>标题 ✓<|/ref|><|det|>[[1, 2, 500, 600]]<|/det|>\n# Überschrift — 見出し\n"
    (block,), plain = parse_grounded(text)
    assert block.label == "标题 ✓" and block.text.strip() == "# Überschrift — 見出し"
    image = Image.new("RGB", (60, 40), "white")
    assert draw_boxes(image, [block]).size == (60, 40)  # a label the default font cannot draw does not fail


def test_hostile_text_never_raises():
    for text in ["<|ref|>" * 2000, "<|ref|>a<|/ref|><|det|>" * 500, "<|det|>[[1, 2, 3, 4]]<|/det|>",
                 "<|/ref|><|ref|><|/det|><|det|>", "<|ref|>a<|b<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>",
                 "<|ref|>x<|/ref|><|det|>[[" + "9" * 5000 + ", 1, 2, 3]]<|/det|>"]:
        blocks, plain = parse_grounded(text)
        assert blocks == [] and "<|ref|>" not in plain and "<|det|>" not in plain


def test_to_pixels():
    assert to_pixels((0, 0, 999, 999), 120, 90) == (0, 0, 120, 90)
    assert to_pixels((1, 1, 2, 2), 10, 10) == (0, 0, 1, 1)  # a tiny box still covers a pixel
    x1, y1, x2, y2 = to_pixels((100, 50, 900, 200), 1000, 500)
    assert (x1, y1, x2, y2) == (100, 25, 901, 101)
    assert all(isinstance(v, int) for v in (x1, y1, x2, y2))


def test_round_trip_with_the_synthetic_layouts():
    cfg = synth.SynthConfig(kinds={"layout": 1.0})
    for i in range(6):
        s = synth.generate(i, cfg)
        blocks, plain = parse_grounded(s.text)
        assert [b.label for b in blocks] == [label for label, _ in s.boxes]
        for b, (_, want) in zip(blocks, s.boxes):
            (box,) = b.boxes
            got = to_pixels(box, *s.image.size)
            assert all(abs(g - w) <= 2 for g, w in zip(got, want)), (i, got, want)
        assert "<|" not in plain and blocks[0].text.strip().startswith("# ")
        md = to_markdown(blocks, plain, ["fig.png"])
        assert md.startswith("# ") and md.endswith("![](fig.png)") and "<|" not in md


def page_image():
    image = Image.new("RGB", (200, 100), (250, 250, 250))
    image.paste((20, 120, 220), (20, 45, 120, 90))  # the "figure"
    return image


def test_draw_boxes_returns_a_new_image():
    image = page_image()
    before = image.tobytes()
    blocks, _ = parse_grounded(PAGE)
    out = draw_boxes(image, blocks)
    assert out is not image and out.size == image.size and out.mode == "RGB"
    assert image.tobytes() == before  # the page itself is untouched
    x1, y1, x2, y2 = to_pixels(blocks[1].boxes[0], *image.size)
    assert out.getpixel((x1, (y1 + y2) // 2)) != image.getpixel((x1, (y1 + y2) // 2))  # the left edge is drawn
    assert out.getpixel(((x1 + x2) // 2, (y1 + y2) // 2)) == image.getpixel(((x1 + x2) // 2, (y1 + y2) // 2))
    grey = draw_boxes(Image.new("L", (50, 50), 200), blocks)
    assert grey.mode == "RGB" and grey.size == (50, 50)


def test_crop_figures(tmp_path):
    image = page_image()
    text = ("<|ref|>image<|/ref|><|det|>[[100, 450, 600, 900]]<|/det|>\n"
            "<|ref|>text<|/ref|><|det|>[[0, 0, 999, 300]]<|/det|>\nwords\n"
            "<|ref|>figure<|/ref|><|det|>[[10, 10, 10, 500], [0, 0, 999, 999]]<|/det|>\n"  # zero width: skipped
            "<|ref|>Chart<|/ref|><|det|>[[500, 500, 501, 501]]<|/det|>\n")
    blocks, plain = parse_grounded(text)
    paths = crop_figures(image, blocks, tmp_path / "new" / "dir", "doc_p1")
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["doc_p1_fig1.png", "doc_p1_fig2.png", "doc_p1_fig3.png"]
    assert [i for i, _ in figure_boxes(blocks)] == [0, 2, 3]
    first = Image.open(paths[0])
    x1, y1, x2, y2 = to_pixels((100, 450, 600, 900), 200, 100)
    assert first.size == (x2 - x1, y2 - y1) and first.getpixel((first.width // 2, first.height // 2)) == (20, 120, 220)
    assert Image.open(paths[1]).size == (200, 100) and Image.open(paths[2]).size >= (1, 1)

    md = to_markdown(blocks, plain, paths)
    assert md.split("\n\n") == [f"![]({paths[0]})", "words", f"![]({paths[1]})", f"![]({paths[2]})"]
    assert crop_figures(image, parse_grounded(PAGE.replace("image<", "table<"))[0], tmp_path, "x") == []


def test_to_markdown():
    blocks, plain = parse_grounded("preface\n" + PAGE)
    md = to_markdown(blocks, plain, ["files/p1_fig1.png"])
    assert md == "preface\n\n# A heading\n\nSome *body* text.\n\n![](files/p1_fig1.png)\n\nFigure 1: a chart"
    assert to_markdown(blocks, plain) == "preface\n\n# A heading\n\nSome *body* text.\n\nFigure 1: a chart"
    assert to_markdown(blocks, plain, []) == to_markdown(blocks, plain)
