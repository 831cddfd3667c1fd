import argparse
import json
import re
import string
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from nanoocr import synth
from nanoocr.synth import (
    BAD_CHARS,
    HELDOUT_FONTS,
    KINDS,
    MIN_FRESH,
    TRAIN_FONTS,
    SynthConfig,
    corpus,
    generate,
    write_dataset,
)

PROMPTS = {"line": "free", "paragraph": "free", "columns": "free", "receipt": "free", "table": "md",
           "heading": "md", "layout": "layout"}
LINE_BOXES = ("line", "paragraph", "columns", "receipt")  # one "line" box per text line, in order
DET = re.compile(r"<\|ref\|>(\w+)<\|/ref\|><\|det\|>\[\[(\d+), (\d+), (\d+), (\d+)\]\]<\|/det\|>")


def one(kind, **kw):
    return SynthConfig(kinds={kind: 1.0}, **kw)


def ink_mask(img):
    a = np.asarray(img, dtype=np.int16)  # clean (augment=0) images: paper is the corner colour
    return np.abs(a - a[0, 0]).max(-1) > 80


def ink_rows(img, min_height=5):
    """Text rows by horizontal ink projection: runs of inked pixel rows at least min_height tall (a line
    with no ascenders shows its i-dots as a separate 2-3 px run above the x-height band)."""
    rows = np.concatenate([[0], ink_mask(img).any(1).astype(np.int8), [0]])
    starts, ends = np.flatnonzero(np.diff(rows) == 1), np.flatnonzero(np.diff(rows) == -1)
    return int(((ends - starts) >= min_height).sum())


def test_deterministic_and_distinct():
    cfg = SynthConfig(augment=0.8)
    for i in range(8):
        a, b = generate(i, cfg), generate(i, cfg)
        assert a.text == b.text and a.boxes == b.boxes and a.kind == b.kind
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    texts = [generate(i, one("line")).text for i in range(20)]
    assert len(set(texts)) >= 18
    assert generate(0, cfg).text != generate(0, SynthConfig(seed=1, augment=0.8)).text
    assert generate(0, one("paragraph")).text != generate(0, one("paragraph"), "heldout").text


def test_deterministic_across_processes():
    # other hash seeds, a cold corpus and font cache: the same sample
    code = ("import hashlib, numpy as np; from nanoocr.synth import generate, SynthConfig; "
            "s = generate(5, SynthConfig(augment=1.0), 'heldout'); "
            "print(hashlib.md5(np.asarray(s.image).tobytes() + s.text.encode()).hexdigest())")
    here = generate(5, SynthConfig(augment=1.0), "heldout")
    import hashlib
    want = hashlib.md5(np.asarray(here.image).tobytes() + here.text.encode()).hexdigest()
    root = synth.Path(synth.__file__).parent.parent
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""}, cwd=root)
    assert out.stdout.strip() == want


def test_font_split():
    assert not set(TRAIN_FONTS) & set(HELDOUT_FONTS)
    for name in TRAIN_FONTS + HELDOUT_FONTS:
        assert (synth.FONT_DIR / name).is_file()
    for i in range(30):
        assert generate(i, SynthConfig(), "train").font in TRAIN_FONTS
        assert generate(i, SynthConfig(), "heldout").font in HELDOUT_FONTS


def test_fonts_draw_printable_ascii():
    from matplotlib.ft2font import FT2Font
    for name in TRAIN_FONTS + HELDOUT_FONTS:
        f = FT2Font(str(synth.FONT_DIR / name))
        missing = [c for c in string.printable[:95] if f.get_char_index(ord(c)) == 0]
        assert not missing, (name, missing)


def test_text_split():
    c = corpus()
    train, held = c["train"], c["heldout"]
    assert len(train.words) > 20000 and len(held.words) > 2000
    assert not set(train.paragraphs) & set(held.paragraphs)
    assert all(p.isascii() and p.isprintable() for p in train.paragraphs + held.paragraphs)
    checked = 0
    for kind in ("line", "paragraph", "heading"):
        for i in range(60):
            for line in generate(i, one(kind, augment=0.0), "heldout").text.split("\n"):
                line = line.lstrip("# ")
                if len(line) >= MIN_FRESH:
                    checked += 1
                    assert line not in train.text, line
    assert checked > 100


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("split", ["train", "heldout"])
def test_every_kind_renders(kind, split):
    for i in range(6):
        s = generate(i, one(kind, augment=0.7), split)
        assert s.kind == kind and s.prompt == PROMPTS[kind]
        assert s.image.mode == "RGB" and min(s.image.size) > 10
        assert s.text.strip() and all(line.isascii() and line.isprintable() for line in s.text.split("\n"))
        assert not set(BAD_CHARS.get(s.font, "")) & set(s.text)  # no glyph the font draws as something else
        W, H = s.image.size
        assert s.boxes
        for label, (x1, y1, x2, y2) in s.boxes:
            assert isinstance(label, str)
            assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H
        if kind in LINE_BOXES:
            assert len(s.boxes) == len(s.text.split("\n"))
            assert all(label == "line" for label, _ in s.boxes)


def test_line_width_and_length():
    cfg = one("line", augment=0.0)
    for i in range(40):
        s = generate(i, cfg)
        _, (x1, _, x2, _) = s.boxes[0]
        assert "\n" not in s.text and 0 < len(s.text) <= cfg.line_chars[1]
        assert x2 - x1 <= cfg.max_width + 2
        assert ink_rows(s.image) == 1


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_paragraph_rows_match_ground_truth(split):
    cfg = one("paragraph", augment=0.0)
    fonts = set()
    for i in range(40):
        s = generate(i, cfg, split)
        lines = s.text.split("\n")
        assert cfg.paragraph_lines[0] <= len(lines) <= cfg.paragraph_lines[1]
        assert ink_rows(s.image) == len(lines), (i, s.font, s.text)
        # each line box holds ink and the boxes go down the page in text order
        a = ink_mask(s.image)
        tops = [b[1] for _, b in s.boxes]
        assert tops == sorted(tops)
        assert all(a[y1:y2, x1:x2].any() for _, (x1, y1, x2, y2) in s.boxes)
        fonts.add(s.font)
    assert len(fonts) >= 3


def test_receipt_prices_add_up():
    for i in range(10):
        lines = generate(i, one("receipt"), "train").text.split("\n")
        prices = [float(line.rsplit(" ", 1)[1]) for line in lines[1:] if re.search(r" \d+\.\d\d$", line)]
        assert prices[-1] == pytest.approx(sum(prices[:-1]), abs=0.011)


def test_table_markdown():
    for i in range(10):
        rows = generate(i, one("table")).text.split("\n")
        assert rows[1].replace(" ", "").strip("|").split("|") == ["---"] * (rows[0].count("|") - 1)
        assert len({r.count("|") for r in rows}) == 1 and 3 <= rows[0].count("|") <= 5
        assert all(r.startswith("| ") and r.endswith(" |") for r in rows)


def test_heading_markdown():
    s = generate(0, one("heading"))
    title, blank, body = s.text.split("\n", 2)
    assert title.startswith("# ") and blank == "" and "\n" not in body
    assert [label for label, _ in s.boxes] == ["title", "text"]


@pytest.mark.parametrize("augment", [0.0, 1.0])
def test_layout_grounding_matches_boxes(augment):
    for i in range(8):
        s = generate(i, one("layout", augment=augment))
        W, H = s.image.size
        dets = DET.findall(s.text)
        assert [d[0] for d in dets] == [label for label, _ in s.boxes]
        assert {d[0] for d in dets} == {"title", "text", "image"} and dets[0][0] == "title"
        for (_, *c), (_, box) in zip(dets, s.boxes):
            want = [round(v * 999 / size) for v, size in zip(box, (W, H, W, H))]
            assert [int(v) for v in c] == want
        blocks = s.text.split("<|ref|>")[1:]
        assert blocks[0].split("\n")[1].startswith("# ")
        assert s.text.endswith("\n\n")


def test_bad_arguments():
    with pytest.raises(ValueError):
        generate(0, SynthConfig(), "test")
    with pytest.raises(ValueError):
        generate(0, SynthConfig(kinds={"poem": 1.0}))


def test_write_dataset_and_cli(tmp_path):
    manifest = write_dataset(tmp_path / "a", 5, SynthConfig(), "heldout")
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(rows) == 5
    for i, row in enumerate(rows):
        s = generate(i, SynthConfig(), "heldout")
        assert row["image"] == f"images/{i:06d}.png" and row["text"] == s.text and row["kind"] == s.kind
        assert row["prompt"] == s.prompt and [[lab, list(b)] for lab, b in s.boxes] == row["boxes"]
        with Image.open(manifest.parent / row["image"]) as im:
            assert im.size == s.image.size
            assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(s.image))  # PNG is lossless
    p = argparse.ArgumentParser()
    synth.add_args(p)
    assert synth.main(p.parse_args(["--out", str(tmp_path / "b"), "--n", "3", "--kinds", "line:2,table",
                                    "--seed", "4"])) == 0
    rows = [json.loads(line) for line in (tmp_path / "b" / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and {r["kind"] for r in rows} <= {"line", "table"}


@pytest.mark.parametrize("augment", [0.0, 1.0])
@pytest.mark.parametrize("kind", LINE_BOXES)
def test_glyph_centres_match_the_drawing(kind, augment):
    for i in range(6):
        s = generate(i, one(kind, augment=augment))
        drawn = "".join(s.text.split())  # one centre per non-space character, in reading order
        assert "".join(c for c, _, _ in s.glyphs) == drawn
        for _, x, y in s.glyphs:  # each centre inside the box of some text line (+ rounding of warped boxes)
            assert any(x1 - 2 <= x <= x2 + 2 and y1 - 2 <= y <= y2 + 2 for _, (x1, y1, x2, y2) in s.boxes)
        if augment == 0:  # and on the line's ink row: some ink within a few pixels of every centre
            ink = ink_mask(s.image)
            for _, x, y in s.glyphs:
                x, y = round(x), round(y)
                assert ink[max(0, y - 8):y + 9, max(0, x - 4):x + 5].any()


def test_slant_shears_the_page_and_its_glyph_centres():
    """slant: the text leans right (ink moves right the higher it is) and the glyph labels follow it."""
    for i in range(4):
        upright, sheared = generate(i, one("paragraph", augment=0.0)), generate(i, one("paragraph", augment=0.0,
                                                                                        slant=1.0))
        assert sheared.text == upright.text and sheared.image.width > upright.image.width
        ink = ink_mask(sheared.image)
        for _, x, y in sheared.glyphs:  # every centre still on ink
            x, y = round(x), round(y)
            assert ink[max(0, y - 8):y + 9, max(0, x - 4):x + 5].any()
        (_, x0, _), (_, x1, y1) = upright.glyphs[0], sheared.glyphs[0]
        (_, xa, _), (_, xb, yb) = upright.glyphs[-1], sheared.glyphs[-1]
        assert (x1 - x0) - (xb - xa) > 0.1 * (yb - y1)  # the first line moved right of the last one


def test_random_text_and_font_lists():
    cfg = one("paragraph", text="random", random_chars="0123456789", fonts="DejaVuSans.ttf,cmr10.ttf")
    for i in range(5):
        s = generate(i, cfg)
        assert set(s.text) <= set("0123456789 \n") and s.font in ("DejaVuSans.ttf", "cmr10.ttf")
    with pytest.raises(ValueError, match="Comic.ttf"):
        generate(0, one("line", fonts="DejaVuSans.ttf,Comic.ttf"))


@pytest.mark.parametrize("kind", KINDS)
def test_text_too_large_for_the_page_is_an_error_not_a_hang(kind):
    cfg = one(kind, font_size=(300, 300), max_width=40, page_width=60)
    with pytest.raises(synth.NoFit, match="font"):
        generate(0, cfg)
