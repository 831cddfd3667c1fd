"""
Synthetic documents: the training data of the from-scratch runs, and their held-out test.

Sample i is a pure function of (cfg.seed, split, i), so the set is indexable, restartable and the same on
every worker. The "train" split draws text and fonts from the training parts; "heldout" from parts never
used in training (paragraphs hashed out of the corpus, font faces left out of TRAIN_FONTS).

  synth_text.py    fonts and corpus, word streams, line wrapping
  synth_pages.py   drawing and the page kinds
  synth_scan.py    scanner augmentation
  synth.py         SynthConfig, Sample, generate, the dataset and text-chat writers, the CLI

    python -m nanoocr.synth --out data/synth --n 1000 [--split heldout] [--kinds line:3,paragraph:1]
"""

import argparse
import json
import math
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from nanoocr.synth_pages import DRAW_KIND, PageContext, grounded, union
from nanoocr.synth_scan import augment, slant
from nanoocr.synth_text import (  # noqa: F401  (FONT_DIR, BAD_CHARS, *_FONTS, NoFit: this module's API too)
    BAD_CHARS,
    FONT_DIR,
    HELDOUT_FONTS,
    RANDOM_CHARS,
    SPLITS,
    TRAIN_FONTS,
    NoFit,
    corpus,
    fonts_for,
    random_words,
)

KINDS = ("line", "paragraph", "columns", "receipt", "table", "heading", "layout")
# the CPU speedrun reads lines and paragraphs; the rest keep the page formats alive
DEFAULT_KINDS = {"line": 0.5, "paragraph": 0.3, "columns": 0.04, "receipt": 0.04, "table": 0.04,
                 "heading": 0.04, "layout": 0.04}
MIN_FRESH = 20  # held-out lines this long never occur verbatim in the training text

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
    slant: float = 0.0  # share of samples sheared 6-14° into a synthetic oblique of whatever face they use

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
        ctx = PageContext(rng, cfg, words, fonts)
        try:
            text, prompt, block = DRAW_KIND[kind](ctx)
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
    if cfg.slant > 0 and rng.random() < cfg.slant:  # drawn only when asked for: samples without it stay the same
        img, boxes, glyphs = slant(img, boxes, glyphs, rng, ctx.paper)
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
