"""
The text side of the synthetic documents: fonts (the TTFs matplotlib ships, split into training and
held-out faces) and the corpus (Python's own documentation: pydoc topics + stdlib module docstrings,
the held-out paragraphs hashed out), word streams and line wrapping. No network is needed, and the
text is the same wherever the Python version is the same.
"""

import hashlib
import importlib.util
import os
import re
import sysconfig
import textwrap
import unicodedata
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

from PIL import ImageFont

SPLITS = ("train", "heldout")
HELDOUT_PERCENT = 10  # share of corpus paragraphs kept out of training

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
BOLD = {"DejaVuSans.ttf": "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf": "DejaVuSans-BoldOblique.ttf",
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


class WordStream:
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


def plain_word(w):
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


