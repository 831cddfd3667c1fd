"""
Synthetic documents: the training data of the from-scratch runs, and their held-out test.

Sample i is a pure function of (cfg.seed, split, i), so the set is indexable, restartable and the same on
every worker. The "train" split draws text and fonts from the training parts; "heldout" from parts never
used in training (paragraphs hashed out of the corpus, font faces left out of TRAIN_FONTS).

Text comes from Python's own documentation (pydoc topics + stdlib module docstrings), so no network is
needed; it is the same wherever the Python version is the same. Fonts are the TTFs matplotlib ships.

    python -m nanoocr.synth --out data/synth --n 1000 [--split heldout] [--kinds line:3,paragraph:1]
"""

import argparse
import hashlib
import importlib.util
import io
import itertools
import json
import math
import os
import random
import re
import sysconfig
import textwrap
import unicodedata
from dataclasses import dataclass, field, replace
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SPLITS = ("train", "heldout")
KINDS = ("line", "paragraph", "columns", "receipt", "table", "heading", "layout")
# the CPU speedrun reads lines and paragraphs; the rest keep the page formats alive
DEFAULT_KINDS = {"line": 0.5, "paragraph": 0.3, "columns": 0.04, "receipt": 0.04, "table": 0.04,
                 "heading": 0.04, "layout": 0.04}
HELDOUT_PERCENT = 10  # share of corpus paragraphs kept out of training
MIN_FRESH = 20  # held-out lines this long never occur verbatim in the training text

# ----------------------------------------------------------------------------- fonts

FONT_DIR = Path(importlib.util.find_spec("matplotlib").origin).parent / "mpl-data" / "fonts" / "ttf"
# held-out faces are bold-italics of families whose bold and italic faces are trained on
HELDOUT_FONTS = ("DejaVuSerif-BoldItalic.ttf", "DejaVuSansMono-BoldOblique.ttf", "STIXGeneralBolIta.ttf")
TRAIN_FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmti10.ttf", "cmss10.ttf", "cmtt10.ttf",
)
# The Computer Modern (BaKoMa) fonts map some ASCII codes to other glyphs (< is drawn as an inverted !,
# | as an em dash, ...); text drawn in them never contains these characters, so the ground truth stays exact.
_CM_BAD = "<>\\^_`{|}~"
BAD_CHARS = {"cmr10.ttf": _CM_BAD, "cmb10.ttf": _CM_BAD, "cmss10.ttf": _CM_BAD, "cmti10.ttf": _CM_BAD + "$"}
_BOLD = {"DejaVuSans.ttf": "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf": "DejaVuSans-BoldOblique.ttf",
         "DejaVuSerif.ttf": "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf": "DejaVuSerif-BoldItalic.ttf",
         "DejaVuSansMono.ttf": "DejaVuSansMono-Bold.ttf",
         "DejaVuSansMono-Oblique.ttf": "DejaVuSansMono-BoldOblique.ttf",
         "STIXGeneral.ttf": "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf": "STIXGeneralBolIta.ttf",
         "cmr10.ttf": "cmb10.ttf"}


@lru_cache(maxsize=1024)
def get_font(name, size):
    # BASIC layout: the same pixels whether or not this machine's Pillow has raqm, and faster for ASCII
    return ImageFont.truetype(str(FONT_DIR / name), size, layout_engine=ImageFont.Layout.BASIC)


@cache
def _x_scale(name):
    # STIX and Computer Modern have smaller lowercase than DejaVu at the same em size: scale them so that
    # font_size means the same x-height (DejaVu Sans's 0.55 em) for every face
    _, top, _, bottom = get_font(name, 100).getbbox("x")
    return min(1.3, max(1.0, 55 / (bottom - top)))


def face_font(name, px):
    """`name` at a DejaVu-equivalent size of px pixels."""
    return get_font(name, round(px * _x_scale(name)))


@lru_cache(maxsize=65536)
def advance(font, c):
    return font.getlength(c)


_PRINTABLE = "".join(chr(c) for c in range(32, 127))


@lru_cache(maxsize=4096)
def v_extent(font):
    """(top, bottom) of any printable ASCII ink relative to the y a line is drawn at."""
    _, top, _, bottom = font.getbbox(_PRINTABLE)
    return top, bottom


def fonts_for(split):
    """A split's faces, or a comma list of TTF files from matplotlib's font folder."""
    if split in SPLITS:
        return TRAIN_FONTS if split == "train" else HELDOUT_FONTS
    faces = tuple(f.strip() for f in split.split(",") if f.strip())
    if not faces:
        raise ValueError(f"synth fonts {split!r}: empty font list")
    missing = [f for f in faces if not (FONT_DIR / f).is_file()]
    if missing:
        raise ValueError(f"synth fonts {split!r}: no such font(s) {missing} in {FONT_DIR}")
    return faces


# ----------------------------------------------------------------------------- corpus

_ASCII = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-",
                        "\u2014": "-", "\u2026": "...", "\u00a0": " "})
_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "turtledemo",
              "ensurepip", "__pycache__"}
_DOCSTRING = re.compile(r"\A(?:\s*#[^\n]*\n|\s)*[rRuU]?(\"\"\"|''')(.*?)\1", re.S)


def _documents():
    """Raw English documents in a fixed order: pydoc topics, then stdlib module docstrings by path."""
    from pydoc_data.topics import topics
    for key in sorted(topics):
        yield topics[key]
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = []
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x not in _SKIP_DIRS]
        paths += [Path(d, f) for f in files if f.endswith(".py")]
    for p in sorted(paths, key=lambda p: p.relative_to(root).as_posix()):
        with open(p, encoding="utf-8", errors="ignore") as f:
            m = _DOCSTRING.match(f.read(20000))
        if m:
            yield textwrap.dedent(m.group(2))


def clean_paragraph(par):
    """A prose paragraph as one line of printable ASCII; None for code, grammar, headings and tables."""
    lines = textwrap.dedent(par).splitlines()
    if not lines or any(line.startswith(("   ", "\t")) for line in lines):
        return None  # indented: code, grammar rules, option tables, quotes
    text = " ".join(unicodedata.normalize("NFKD", par.translate(_ASCII)).split())
    text = text.encode("ascii", "ignore").decode()
    if len(text) < 40 or any(s in text for s in (">>>", "::=", "***", "===", "---", "~~~")):
        return None
    if sum(c.isalpha() or c == " " for c in text) < 0.85 * len(text):
        return None  # mostly symbols or numbers
    return text


RANDOM_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:'\"!?()-/&%$#"


def random_words(rng, chars=RANDOM_CHARS, n=400):
    """Words of random characters: text a reader can only get from the pixels, never from a language prior."""
    return ["".join(rng.choices(chars, k=rng.randint(1, 8))) for _ in range(n)]


def _heldout(par):
    return int(hashlib.md5(par.lower().encode()).hexdigest(), 16) % 100 < HELDOUT_PERCENT


@dataclass
class Corpus:
    paragraphs: list
    words: list  # the paragraphs' words, one stream
    text: str  # the paragraphs joined by spaces, for substring checks


@cache
def corpus():
    """{"train": Corpus, "heldout": Corpus}; built once per process (~0.2 s), then cached."""
    seen, parts = set(), {s: [] for s in SPLITS}
    for doc in _documents():
        for par in re.split(r"\n\s*\n", doc):
            text = clean_paragraph(par)
            if text and text.lower() not in seen:  # duplicates could land on both sides
                seen.add(text.lower())
                parts["heldout" if _heldout(text) else "train"].append(text)
    return {s: Corpus(p, " ".join(p).split(" "), " ".join(p)) for s, p in parts.items()}


class _Stream:
    """Corpus words from a random position on, skipping words the fonts cannot draw; wraps around."""

    def __init__(self, rng, words, bad, pred=None):
        self.words, self.i, self.bad, self.pred = words, rng.randrange(len(words)), bad, pred
        self._skip()

    def _skip(self):
        for _ in range(len(self.words)):
            w = self.words[self.i % len(self.words)]
            if self.bad.isdisjoint(w) and (self.pred is None or self.pred(w)):
                return
            self.i += 1
        raise NoFit("no word in the text source suits this font and kind (with text=random, check random_chars: "
                    "some kinds need words of 3+ letters, and some fonts cannot draw <>\\^_`{|}~)")

    def peek(self):
        return self.words[self.i % len(self.words)]

    def pop(self):
        w = self.peek()
        self.i += 1
        self._skip()
        return w


def _plain(w):
    return w.isalpha() and 3 <= len(w) <= 10


class NoFit(ValueError):
    """The config leaves no room for the text (e.g. fonts too large for the width)."""


def wrap(stream, font, width, n_lines, max_chars=10**6):
    """Greedy line filling from a word stream: n_lines lines, each at most `width` px and `max_chars`."""
    lines = []
    for _ in range(n_lines):
        line, skipped = "", 0
        while True:
            if skipped > 200:
                raise NoFit(f"no word fits in {width:.0f} px at font size {font.size}: use a smaller font_size "
                            "or a larger max_width / page_width")
            w = stream.peek()
            cand = line + " " + w if line else w
            if not line and not any(c.isalnum() for c in w):
                stream.pop()  # no line starts with a bare "-" or "...": it could be the whole line
                skipped += 1
            elif len(cand) <= max_chars and font.getlength(cand) <= width:
                line = cand
                stream.pop()
            elif not line:
                stream.pop()  # a word wider than the whole line is skipped, not split
                skipped += 1
            else:
                break
        lines.append(line)
    return lines


# ----------------------------------------------------------------------------- config + sample

@dataclass
class SynthConfig:
    seed: int = 0
    kinds: dict = field(default_factory=lambda: dict(DEFAULT_KINDS))  # kind -> sampling weight
    font_size: tuple = (14, 20)  # body px, inclusive: DejaVu em size; other faces matched by x-height
    max_width: int = 232  # px of a line/paragraph/receipt/heading block: with margins, images <= 256 wide
    page_width: int = 360  # px of the text area of page-like kinds (columns, table, layout)
    line_chars: tuple = (5, 40)  # target length of a "line" sample; the width limit may cut it shorter
    paragraph_lines: tuple = (3, 6)
    margin: tuple = (4, 12)  # px of paper around the text, each side drawn independently
    augment: float = 0.5  # 0 = clean; 1 = strongest noise/blur/JPEG/rotation/perspective/lighting
    fonts: str = "auto"  # "auto" = the split's fonts; "train"/"heldout" force one set; or "a.ttf,b.ttf" (ablations)
    text: str = "auto"  # same for the text corpus; "random" = random character strings (no language to guess from)
    random_chars: str = RANDOM_CHARS  # the alphabet of text="random"
    random_text: float = 0.0  # share of samples drawn as random characters anyway (forces reading; 0 = none)

    def with_overrides(self, assignments):
        """A copy with "field=value" strings applied; tuples are comma lists ("line_chars=3,12")."""
        kw = {}
        for a in assignments:
            key, eq, value = a.partition("=")
            if not eq or key not in self.__dataclass_fields__ or key == "kinds":
                raise ValueError(f"synth override {a!r}: expected FIELD=VALUE with FIELD one of "
                                 f"{sorted(set(self.__dataclass_fields__) - {'kinds'})}")
            cur = getattr(self, key)
            try:
                if isinstance(cur, tuple):
                    kw[key] = tuple(type(c)(v) for c, v in zip(cur, value.split(","), strict=True))
                else:
                    kw[key] = type(cur)(value)
            except ValueError as e:
                raise ValueError(f"synth override {a!r}: {e}") from None
        return replace(self, **kw)


@dataclass
class Sample:
    image: Image.Image  # RGB
    text: str  # exact ground truth
    kind: str
    prompt: str  # "free", "md" (markdown, no boxes) or "layout" (grounded markdown)
    boxes: list = field(default_factory=list)  # [(label, (x1, y1, x2, y2))] in pixels of `image`
    glyphs: list = field(default_factory=list)  # [(char, x, y)]: the centre of every drawn non-space character
    font: str = ""  # the body font's file name


# ----------------------------------------------------------------------------- drawing

class _Doc:
    """Draw operations in content coordinates; rendered once the page size is known."""

    def __init__(self, ink):
        self.ops, self.boxes, self.ink, self.extents, self.glyphs = [], [], ink, [], []

    def text(self, x, y, s, font, fill=None):
        """Draw s with its ascender line at y; returns its ink box."""
        self.ops.append(("text", (x, y), s, font, fill or self.ink))
        l, t, r, b = font.getbbox(s)
        top, bottom = v_extent(font)  # pages get room for the line, not just this text's ink
        self.extents.append((x + l, y + top, x + r, y + bottom))
        # glyph centres, the labels of a dense reading loss: advance widths along the line, mid-line height
        cy = y + (top + bottom) / 2
        widths = [advance(font, c) for c in s]
        lefts = itertools.accumulate(widths, initial=x)  # BASIC layout does not kern: advances add up
        self.glyphs += [(c, left + w / 2, cy) for c, w, left in zip(s, widths, lefts) if not c.isspace()]
        return (x + l, y + t, x + r, y + b)

    def words(self, x, y, words, font, width):
        """A justified line: first word at x, last word ending at x + width."""
        ws = [font.getlength(w) for w in words]
        gap = (width - sum(ws)) / max(1, len(words) - 1)
        boxes = []
        for w, wl in zip(words, ws):
            boxes.append(self.text(round(x), y, w, font))
            x += wl + gap
        return union(boxes)

    def rect(self, box, fill=None, outline=None, width=1):
        self.ops.append(("rect", box, fill, outline, width))
        self.extents.append((box[0], box[1], box[2] + 1, box[3] + 1))

    def rule(self, xy, fill=None, width=1):
        self.ops.append(("line", xy, fill or self.ink, width))
        xs, ys = zip(*xy)
        self.extents.append((min(xs), min(ys), max(xs) + width, max(ys) + width))

    def render(self, size, paper, dx, dy):
        img = Image.new("RGB", size, paper)
        d = ImageDraw.Draw(img)
        for op in self.ops:
            if op[0] == "text":
                (x, y), s, font, fill = op[1:]
                d.text((x + dx, y + dy), s, font=font, fill=fill)
            elif op[0] == "rect":
                (x1, y1, x2, y2), fill, outline, width = op[1:]
                d.rectangle((x1 + dx, y1 + dy, x2 + dx, y2 + dy), fill=fill, outline=outline, width=width)
            else:
                xy, fill, width = op[1:]
                d.line([(x + dx, y + dy) for x, y in xy], fill=fill, width=width)
        boxes = [(lab, (x1 + dx, y1 + dy, x2 + dx, y2 + dy)) for lab, (x1, y1, x2, y2) in self.boxes]
        glyphs = [(c, x + dx, y + dy) for c, x, y in self.glyphs]
        return img, boxes, glyphs


def union(boxes):
    x1, y1, x2, y2 = zip(*boxes)
    return (min(x1), min(y1), max(x2), max(y2))


def _luma(c):
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _colors(rng):
    """(paper, ink): light paper with a slight tint, dark ink, luma contrast >= 140."""
    base = rng.randint(222, 255)
    paper = tuple(min(255, base + rng.randint(-14, 6)) for _ in range(3))
    if rng.random() < 0.75:  # black/grey ink
        g = rng.randint(0, 70)
        ink = tuple(max(0, g + rng.randint(-10, 10)) for _ in range(3))
    else:  # dark blue, red, green, brown...
        ink = [rng.randint(0, 40) for _ in range(3)]
        ink[rng.randrange(3)] = rng.randint(60, 120)
        ink = tuple(ink)
    while _luma(paper) - _luma(ink) < 140:
        ink = tuple(max(0, v - 20) for v in ink)
    return paper, ink


class _Ctx:
    """What a kind needs: the rng, the config, the corpus words, and the split's fonts."""

    def __init__(self, rng, cfg, words, faces):
        self.rng, self.cfg, self.words = rng, cfg, words
        self.face = rng.choice(faces)
        bold = _BOLD.get(self.face, self.face)
        self.bold = bold if bold in faces else self.face  # never borrow a face from the other split
        self.bad = set(BAD_CHARS.get(self.face, "")) | set(BAD_CHARS.get(self.bold, ""))
        self.size = rng.randint(*cfg.font_size)
        self.font = face_font(self.face, self.size)
        self.paper, self.ink = _colors(rng)
        self.doc = _Doc(self.ink)

    def stream(self, pred=None):
        return _Stream(self.rng, self.words, self.bad, pred)

    def line_height(self, font, lo=1.15, hi=1.5):
        # never below the font's ASCII ink height + 2 px: rows of ink never touch (tests count rows)
        top, bottom = v_extent(font)
        return max(bottom - top + 2, round(font.size * self.rng.uniform(lo, hi)))

    def paragraph(self, x, y, lines, font, width, label="line", lh=None):
        """Draw wrapped lines at (x, y), left-aligned or (sometimes) justified -> (ink boxes, bottom)."""
        lh = lh or self.line_height(font)
        justify = self.rng.random() < 0.25
        boxes = []
        for i, line in enumerate(lines):
            # justify all but the last line, unless that would open gaps wider than 2.5 spaces
            slack = (width - font.getlength(line)) / max(1, line.count(" "))
            if justify and i < len(lines) - 1 and " " in line and slack <= 1.5 * font.getlength(" "):
                boxes.append(self.doc.words(x, y, line.split(" "), font, width))
            else:
                boxes.append(self.doc.text(x, y, line, font))
            y += lh
        if label:
            self.doc.boxes += [(label, b) for b in boxes]
        return boxes, y - lh + v_extent(font)[1]

    def heading(self, max_words, width, font):
        stream = self.stream(_plain)
        words = [stream.pop() for _ in range(self.rng.randint(2, max_words))]
        words = [w.capitalize() for w in words] if self.rng.random() < 0.5 else words
        words[0] = words[0].capitalize()
        while len(words) > 1 and font.getlength(" ".join(words)) > width:
            words.pop()
        return " ".join(words)


def _last_line(ctx, lines):
    # real paragraphs end part-way through their last line
    if ctx.rng.random() < 0.6 and " " in lines[-1]:
        words = lines[-1].split(" ")
        lines[-1] = " ".join(words[:ctx.rng.randint(1, len(words) - 1)])
    return lines


# ----------------------------------------------------------------------------- kinds
# Each kind draws into ctx.doc (any origin: the page is fitted around what was drawn) and returns
# (text, prompt, block width); "layout" returns its blocks' markdown, made grounded once boxes are final.

def _line(ctx):
    cfg = ctx.cfg
    line = wrap(ctx.stream(), ctx.font, cfg.max_width, 1, ctx.rng.randint(*cfg.line_chars))[0]
    ctx.doc.boxes.append(("line", ctx.doc.text(0, 0, line, ctx.font)))
    return line, "free", cfg.max_width


def _paragraph(ctx):
    cfg = ctx.cfg
    width = ctx.rng.randint(int(0.6 * cfg.max_width), cfg.max_width)
    lines = _last_line(ctx, wrap(ctx.stream(), ctx.font, width, ctx.rng.randint(*cfg.paragraph_lines)))
    ctx.paragraph(0, 0, lines, ctx.font, width)
    return "\n".join(lines), "free", cfg.max_width


def _columns(ctx):
    cfg, rng = ctx.cfg, ctx.rng
    gutter = rng.randint(12, 24)
    col = (cfg.page_width - gutter) // 2
    stream, lh = ctx.stream(), ctx.line_height(ctx.font)
    left = wrap(stream, ctx.font, col, rng.randint(3, 8))  # the right column continues the left one
    right = _last_line(ctx, wrap(stream, ctx.font, col, rng.randint(2, len(left))))
    _, b1 = ctx.paragraph(0, 0, left, ctx.font, col, lh=lh)
    _, b2 = ctx.paragraph(col + gutter, 0, right, ctx.font, col, lh=lh)
    if rng.random() < 0.4:
        ctx.doc.rule([(col + gutter // 2, 0), (col + gutter // 2, max(b1, b2))])
    return "\n".join(left + right), "free", cfg.page_width


def _price(rng):
    return rng.randint(20, 4999) / 100 if rng.random() < 0.9 else rng.randint(50, 30000) / 100


def _receipt(ctx):
    cfg, rng, doc, font = ctx.cfg, ctx.rng, ctx.doc, ctx.font
    width = rng.randint(int(0.75 * cfg.max_width), cfg.max_width)
    bold = face_font(ctx.bold, round(ctx.size * rng.uniform(1.0, 1.4)))
    lh, lines, y = ctx.line_height(font, 1.1, 1.35), [], 0

    def centred(s, f):
        nonlocal y
        x = max(0, round((width - f.getlength(s)) / 2))
        doc.boxes.append(("line", doc.text(x, y, s, f)))
        lines.append(s)
        y += ctx.line_height(f, 1.1, 1.35)

    def row(label, value, f=font):
        nonlocal y
        b1 = doc.text(0, y, label, f)
        b2 = doc.text(round(width - f.getlength(value)), y, value, f)
        doc.boxes.append(("line", union([b1, b2])))
        lines.append(f"{label} {value}")
        y += max(lh, ctx.line_height(f, 1.1, 1.1))

    def dashes():
        nonlocal y
        top, bottom = v_extent(font)
        yy = y + top - 2  # between the previous row's ink and the next one's
        for x in range(0, width - 3, 6):
            doc.rule([(x, yy), (x + 3, yy)])
        y += (bottom - top) // 2

    shop = " ".join(ctx.stream(_plain).pop().capitalize() for _ in range(rng.randint(1, 2)))
    centred(shop + rng.choice(["", " Market", " Cafe", " Store", " & Co", " Books", " Deli"]), bold)
    if rng.random() < 0.7:
        centred(f"{rng.randint(2015, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} "
                f"{rng.randint(7, 22):02d}:{rng.randint(0, 59):02d}", font)
    dashes()
    total, stream = 0.0, ctx.stream(_plain)
    for _ in range(rng.randint(2, 6)):
        qty = rng.randint(2, 4) if rng.random() < 0.2 else 1
        price = _price(rng) * qty
        total += price
        value = f"{price:.2f}"
        room = width - font.getlength(value + "  ")
        name = wrap(stream, font, room, 1, rng.randint(4, 18))[0].capitalize()
        row(f"{qty} x {name}" if qty > 1 and font.getlength(f"{qty} x {name}") <= room else name, value)
    dashes()
    label = rng.choice(["TOTAL", "Total", "Amount due", "Balance"])
    row(label, f"{total:.2f}", bold if rng.random() < 0.5 else font)
    return "\n".join(lines), "free", cfg.max_width


def _cell(rng, stream, kind):
    if kind == "num":
        return str(rng.randint(0, 10 ** rng.randint(1, 4)))
    if kind == "money":
        return f"{_price(rng):.2f}"
    return " ".join(stream.pop() for _ in range(1 if kind == "word" or rng.random() < 0.6 else 2))


def _table(ctx):
    cfg, rng, doc = ctx.cfg, ctx.rng, ctx.doc
    stream, font = ctx.stream(_plain), ctx.font
    ncols, nrows = rng.randint(2, 4), rng.randint(2, 5)
    types = ["word"] + [rng.choice(["word", "words", "num", "money"]) for _ in range(ncols - 1)]
    rows = [[stream.pop().capitalize() for _ in range(ncols)]]
    rows += [[_cell(rng, stream, t) for t in types] for _ in range(nrows)]
    hfont = face_font(ctx.bold, ctx.size) if rng.random() < 0.7 else font
    px, py = rng.randint(4, 8), rng.randint(2, 5)
    fonts = [hfont] + [font] * nrows

    def widths():
        return [max(f.getlength(r[j]) for r, f in zip(rows, fonts)) + 2 * px for j in range(len(rows[0]))]

    while sum(widths()) > cfg.page_width and len(rows[0]) > 2:
        rows, types = [r[:-1] for r in rows], types[:-1]
    if sum(widths()) > cfg.page_width:  # two wide columns: shorten to one word, then to 8 characters
        rows = [[c.split(" ")[0] for c in r] for r in rows]
        if sum(widths()) > cfg.page_width:
            rows = [[c[:8] for c in r] for r in rows]
        if sum(widths()) > cfg.page_width:
            raise NoFit(f"a 2-column table is wider than page_width {cfg.page_width} at font size {ctx.size}: use "
                        "a smaller font_size or a larger page_width")
    cw = [math.ceil(w) for w in widths()]
    top, bottom = v_extent(font)
    rh = bottom - top + 2 * py
    xs = [sum(cw[:j]) for j in range(len(cw) + 1)]
    W, H = xs[-1], rh * len(rows)
    if rng.random() < 0.5:
        doc.rect((0, 0, W, rh), fill=tuple(max(0, v - 28) for v in ctx.paper))  # shaded header
    full_grid = rng.random() < 0.7
    for i in range(len(rows) + 1):
        if full_grid or i in (0, 1, len(rows)):
            doc.rule([(0, i * rh), (W, i * rh)])
    if full_grid:
        for x in xs:
            doc.rule([(x, 0), (x, H)])
    for i, (r, f) in enumerate(zip(rows, fonts)):
        for j, c in enumerate(r):
            right = i > 0 and types[j] in ("num", "money")
            x = xs[j + 1] - px - f.getlength(c) if right else xs[j] + px
            doc.text(round(x), i * rh + py - top, c, f)
    doc.boxes.append(("table", (0, 0, W + 1, H + 1)))
    md = ["| " + " | ".join(rows[0]) + " |", "| " + " | ".join(["---"] * len(rows[0])) + " |"]
    md += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(md), "md", W + 1


def _title_and_text(ctx, width, n_lines):
    """A bold heading over a wrapped paragraph -> (title, lines, title box, text box, bottom)."""
    rng = ctx.rng
    hfont = face_font(ctx.bold, round(ctx.size * rng.uniform(1.3, 1.8)))
    title = ctx.heading(6, width, hfont)
    hx = round((width - hfont.getlength(title)) / 2) if rng.random() < 0.3 else 0
    tbox = ctx.doc.text(hx, 0, title, hfont)
    # the paragraph's ink starts a gap below the heading's
    y = v_extent(hfont)[1] + round(ctx.size * rng.uniform(0.5, 1.2)) - v_extent(ctx.font)[0]
    lines = _last_line(ctx, wrap(ctx.stream(), ctx.font, width, n_lines))
    boxes, bottom = ctx.paragraph(0, y, lines, ctx.font, width, label=None)
    return title, lines, tbox, union(boxes), bottom


def _heading(ctx):
    cfg = ctx.cfg
    width = ctx.rng.randint(int(0.8 * cfg.max_width), cfg.max_width)
    title, lines, tbox, pbox, _ = _title_and_text(ctx, width, ctx.rng.randint(2, 5))
    ctx.doc.boxes += [("title", tbox), ("text", pbox)]
    return f"# {title}\n\n{' '.join(lines)}", "md", cfg.max_width


def _figure(ctx, box):
    """A filled panel with a little bar chart or polyline: an image region with no text in it."""
    rng, doc = ctx.rng, ctx.doc
    x1, y1, x2, y2 = box
    fill = tuple(rng.randint(150, 225) for _ in range(3))
    doc.rect(box, fill=fill, outline=ctx.ink if rng.random() < 0.5 else None)
    n, w, h = rng.randint(3, 8), x2 - x1, y2 - y1
    color = tuple(rng.randint(20, 120) for _ in range(3))
    if rng.random() < 0.5:
        bw = max(2, w // (2 * n + 1))
        for i in range(n):
            top = y2 - 3 - rng.randint(h // 5, max(h // 5, h - 8))
            doc.rect((x1 + (2 * i + 1) * bw, top, x1 + (2 * i + 2) * bw, y2 - 3), fill=color)
    else:
        pts = [(x1 + 4 + i * (w - 8) // n, rng.randint(y1 + 4, max(y1 + 4, y2 - 4))) for i in range(n + 1)]
        doc.rule(pts, fill=color, width=2)


def _layout(ctx):
    cfg, rng = ctx.cfg, ctx.rng
    pw, gap = cfg.page_width, rng.randint(10, 20)
    side = rng.random() < 0.5
    tw = rng.randint(int(0.5 * pw), int(0.65 * pw)) if side else rng.randint(int(0.75 * pw), pw)
    title, lines, tbox, pbox, bottom = _title_and_text(ctx, tw, rng.randint(*cfg.paragraph_lines))
    if side:  # figure to the right of the paragraph
        x = tw + gap
        fbox = (x, pbox[1], rng.randint(x + 40, max(pw, x + 40)), pbox[1] + rng.randint(40, 110))
    else:  # figure under it
        fw = rng.randint(int(0.4 * pw), pw)
        fx = rng.randint(0, pw - fw)
        fbox = (fx, bottom + gap, fx + fw, bottom + gap + rng.randint(40, 100))
    _figure(ctx, fbox)
    ctx.doc.boxes += [("title", tbox), ("text", pbox), ("image", (*fbox[:2], fbox[2] + 1, fbox[3] + 1))]
    return [f"# {title}", " ".join(lines), ""], "layout", pw


_KINDS = {"line": _line, "paragraph": _paragraph, "columns": _columns, "receipt": _receipt, "table": _table,
          "heading": _heading, "layout": _layout}


def grounded(blocks, boxes, width, height):
    """DeepSeek's grounded markdown: one `<|ref|>label<|/ref|><|det|>[[x1, y1, x2, y2]]<|/det|>` block per
    region, coordinates scaled to integers 0..999 of the image size, then the region's markdown."""
    out = []
    for content, (label, (x1, y1, x2, y2)) in zip(blocks, boxes):
        c = [min(999, max(0, round(v * 999 / s))) for v, s in zip((x1, y1, x2, y2), (width, height) * 2)]
        head = f"<|ref|>{label}<|/ref|><|det|>[[{c[0]}, {c[1]}, {c[2]}, {c[3]}]]<|/det|>\n"
        out.append(head + (content + "\n\n" if content else "\n"))
    return "".join(out)


# ----------------------------------------------------------------------------- augmentation

def _homography(src, dst):
    a, b = [], []
    for (x, y), (u, v) in zip(src, dst):
        a += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
        b += [u, v]
    return np.append(np.linalg.solve(np.array(a, float), np.array(b, float)), 1.0).reshape(3, 3)


def _warp(img, boxes, glyphs, rng, s, paper, rotate, perspective):
    """Rotation and/or corner jitter as one homography; boxes follow (axis-aligned hull of their corners),
    and so do glyph centres."""
    W, H = img.size
    src = np.array([[0, 0], [W, 0], [W, H], [0, H]], float)
    dst = src - (W / 2, H / 2)
    if rotate:
        a = math.radians(rng.uniform(-2, 2) * s)
        dst = dst @ np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    if perspective:
        j = 0.015 * s * max(W, H)
        dst = dst + np.array([[rng.uniform(-j, j), rng.uniform(-j, j)] for _ in range(4)])
    dst -= dst.min(0)
    size = tuple(int(math.ceil(v)) for v in dst.max(0))
    h = _homography(src, dst)
    inv = np.linalg.inv(h)
    img = img.transform(size, Image.PERSPECTIVE, tuple((inv / inv[2, 2]).flatten()[:8]), Image.BILINEAR,
                        fillcolor=paper)
    out = []
    for label, (x1, y1, x2, y2) in boxes:
        p = np.array([[x1, y1, 1], [x2, y1, 1], [x2, y2, 1], [x1, y2, 1]], float) @ h.T
        p = p[:, :2] / p[:, 2:]
        lo, hi = np.floor(p.min(0)), np.ceil(p.max(0))
        out.append((label, (int(max(0, lo[0])), int(max(0, lo[1])), int(min(size[0], hi[0])),
                            int(min(size[1], hi[1])))))
    if glyphs:
        p = np.array([[x, y, 1] for _, x, y in glyphs], float) @ h.T
        glyphs = [(c, float(u), float(v)) for (c, _, _), (u, v) in zip(glyphs, p[:, :2] / p[:, 2:])]
    return img, out, glyphs


def augment(img, boxes, glyphs, rng, strength, paper):
    """Scanner/camera defects scaled by strength in [0, 1]; the text is untouched, boxes and glyph centres
    follow geometry."""
    if strength <= 0:
        return img, boxes, glyphs
    s = strength
    rotate, perspective = rng.random() < 0.5, rng.random() < 0.3
    if rotate or perspective:
        img, boxes, glyphs = _warp(img, boxes, glyphs, rng, s, paper, rotate, perspective)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.2 + 0.6 * s)))
    lighting, noise = rng.random() < 0.4, rng.random() < 0.5
    if lighting or noise:
        a = np.asarray(img, dtype=np.float32)
        nrng = np.random.default_rng(rng.getrandbits(63))
        if lighting:  # a linear shadow across the page in a random direction
            H, W = a.shape[:2]
            t = rng.uniform(0, 2 * math.pi)
            g = np.cos(t) * np.linspace(0, 1, W, dtype=np.float32)[None, :] \
                + np.sin(t) * np.linspace(0, 1, H, dtype=np.float32)[:, None]
            g = (g - g.min()) / max(1e-6, float(g.max() - g.min()))
            a *= (1 - rng.uniform(0.05, 0.3) * s * g)[:, :, None]
        if noise:
            a += nrng.normal(0, rng.uniform(2, 2 + 10 * s), a.shape[:2])[:, :, None]
        img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=rng.randint(int(90 - 55 * s), 92))
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return img, boxes, glyphs


# ----------------------------------------------------------------------------- samples

def _fresh(text):
    """No line of MIN_FRESH+ characters occurs verbatim in the training text (held-out paragraphs can still
    share stock phrases like "is equivalent to the expression" with training ones)."""
    train = corpus()["train"].text
    lines = "\n".join(text if isinstance(text, list) else [text]).split("\n")
    return not any(len(s) >= MIN_FRESH and s in train for s in (line.lstrip("# ") for line in lines))


def generate(index: int, cfg: SynthConfig, split: str = "train") -> Sample:
    """Sample `index` of `split`: a pure function of (cfg.seed, split, index) and the config."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    unknown = set(cfg.kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown synth kind(s) {sorted(unknown)}; choose from {', '.join(KINDS)}")
    text_split = split if cfg.text == "auto" else cfg.text
    fonts = fonts_for(split if cfg.fonts == "auto" else cfg.fonts)
    for attempt in range(20):  # held-out text is redrawn until it shares no long line with training text
        # str seeds are hashed with sha512: the same sample in every process and on every run
        rng = random.Random(f"{cfg.seed}:{split}:{index}" + (f":{attempt}" if attempt else ""))
        kind = rng.choices(list(cfg.kinds), weights=list(cfg.kinds.values()))[0]
        # only drawn when asked for, so samples without it stay byte-identical
        rand = text_split == "random" or (cfg.random_text > 0 and rng.random() < cfg.random_text)
        words = random_words(rng, cfg.random_chars) if rand else corpus()[text_split].words
        ctx = _Ctx(rng, cfg, words, fonts)
        try:
            text, prompt, block = _KINDS[kind](ctx)
        except NoFit as e:
            if attempt == 19:
                raise NoFit(f"synth {kind!r} sample {index}: {e}") from None
            continue
        if text_split in ("train", "random") or rand or _fresh(text):
            break
    else:  # held-out text that overlaps training text would make the held-out scores a lie
        raise ValueError(f"synth {split} sample {index}: no draw of 20 had text fresh from the training text "
                         f"(every one shares a line of {MIN_FRESH}+ characters with it)")
    x1, y1, x2, y2 = union(ctx.doc.extents)
    x1, y1 = math.floor(x1), math.floor(y1)
    cw, ch = math.ceil(x2) - x1, math.ceil(y2) - y1
    mx1, mx2, my1, my2 = (rng.randint(*cfg.margin) for _ in range(4))
    dx = mx1 - x1 + rng.randint(0, max(0, block - cw))  # random horizontal offset
    img, boxes, glyphs = ctx.doc.render((mx1 + max(block, cw) + mx2, my1 + ch + my2), ctx.paper, dx, my1 - y1)
    img, boxes, glyphs = augment(img, boxes, glyphs, rng, cfg.augment, ctx.paper)
    if prompt == "layout":
        text = grounded(text, boxes, *img.size)
    return Sample(img, text, kind, prompt, boxes, font=ctx.face, glyphs=glyphs)


def write_dataset(out_dir, n, cfg=None, split="train", progress=None):
    """images/{i:06d}.png + manifest.jsonl (paths relative to the manifest); returns the manifest path."""
    from tqdm import tqdm
    cfg = cfg or SynthConfig()
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.jsonl"
    with open(manifest, "w", encoding="utf-8") as f:
        show = n >= 200 if progress is None else progress
        for i in tqdm(range(n), desc=f"synth {split}", disable=not show):
            s = generate(i, cfg, split)
            name = f"images/{i:06d}.png"
            s.image.save(out / name, compress_level=1)
            row = {"image": name, "text": s.text, "kind": s.kind, "prompt": s.prompt,
                   "boxes": [[lab, list(b)] for lab, b in s.boxes], "font": s.font}
            f.write(json.dumps(row) + "\n")
    return manifest


def parse_kinds(spec):
    """'line,paragraph' or 'line:3,paragraph:1' -> {kind: weight}."""
    kinds = {}
    for part in spec.split(","):
        k, _, w = part.strip().partition(":")
        kinds[k] = float(w) if w else 1.0
    return kinds


def write_text_chat(path, n, split="train", seed=0):
    """Text-only chat samples for mixing into Phase 2: continue a corpus paragraph from its first sentence."""
    paragraphs = [p for p in corpus()[split].paragraphs if ". " in p]
    rng = random.Random(f"chat:{seed}:{split}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            head, _, rest = rng.choice(paragraphs).partition(". ")
            messages = [{"role": "user", "content": f"Continue this text: {head}."},
                        {"role": "assistant", "content": rest}]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def add_args(p):
    p.add_argument("--out", required=True, help="output folder (images/ + manifest.jsonl)")
    p.add_argument("--n", type=int, default=0, help="number of samples")
    p.add_argument("--text-chat", type=int, default=0, metavar="N",
                   help="instead: write N text-only chat samples (JSONL file at --out) from the corpus")
    p.add_argument("--split", default="train", choices=SPLITS)
    p.add_argument("--kinds", default=None,
                   help=f"weights, e.g. line,paragraph or line:3,table:1; kinds: {', '.join(KINDS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--augment", type=float, default=SynthConfig.augment, help="0 = clean .. 1 = strongest")
    p.add_argument("--max-width", type=int, default=SynthConfig.max_width, help="px of a text block")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="any other SynthConfig field, e.g. line_chars=4,14 font_size=16,24")


def main(args=None):
    if args is None:
        p = argparse.ArgumentParser(prog="python -m nanoocr.synth", description="Write a synthetic dataset.")
        add_args(p)
        args = p.parse_args()
    if args.text_chat:
        print(write_text_chat(args.out, args.text_chat, args.split, args.seed))
        return 0
    if args.n <= 0:
        raise SystemExit("give --n N (samples) or --text-chat N")
    cfg = SynthConfig(seed=args.seed, augment=args.augment, max_width=args.max_width).with_overrides(args.set)
    if args.kinds:
        cfg.kinds = parse_kinds(args.kinds)
    print(write_dataset(args.out, args.n, cfg, args.split))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
