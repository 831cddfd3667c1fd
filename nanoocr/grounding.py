"""
DeepSeek's grounded output: a strict parser, box drawing, figure crops and clean markdown.

A grounded answer is a run of blocks, each a header then that region's markdown:

    <|ref|>title<|/ref|><|det|>[[100, 50, 900, 200]]<|/det|>
    # A heading

Coordinates are integers 0..999 of the image's width and height; a det may hold several boxes. The parser
accepts only that shape (non-negative integers, exactly four per box, x1 <= x2, y1 <= y2, all <= 999) and reads
it with a regular expression: model output is never run as code (DeepSeek's reference code passes it to
Python's eval). A header that is not exactly that
shape is no block: its text stays in the page's text (the grounding markers themselves are dropped, so the
markdown and plain text never carry `<|ref|>`/`<|det|>` tokens), as does a `<|ref|>x<|/ref|>` with no det.
"""

import re
import zlib
from dataclasses import dataclass
from pathlib import Path

from PIL import ImageDraw, ImageFont

# labels whose region is a picture, not text: cropped to a file and linked from the markdown
FIGURE_LABELS = {"image", "figure", "chart", "picture", "photo", "diagram", "graphic", "graph", "plot"}
MARKERS = re.compile(r"<\|/?(?:ref|det)\|>")
# label and det may not contain "<|", so a header never reaches into the next one
HEADER = re.compile(r"<\|ref\|>((?:(?!<\|).)*?)<\|/ref\|>\s*<\|det\|>((?:(?!<\|).)*?)<\|/det\|>", re.S)
# [0-9], not \d (which takes any script's digits); at most 9 digits so int() is cheap on hostile input
_NUM = r"\s*([0-9]{1,9})\s*"
_BOX = rf"\[{_NUM},{_NUM},{_NUM},{_NUM}\]"
BOX = re.compile(_BOX)
BOXES = re.compile(rf"\s*\[\s*{_BOX}(?:\s*,\s*{_BOX})*\s*\]\s*")
COLORS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
          (240, 50, 230), (128, 128, 0), (0, 128, 128), (170, 110, 40), (128, 0, 0), (0, 0, 128))


@dataclass
class Block:
    label: str
    boxes: list[tuple[int, int, int, int]]  # (x1, y1, x2, y2), integers 0..999 of the image's width and height
    text: str  # the region's markdown: everything up to the next block, as written (see parse_grounded)


def parse_boxes(det):
    """The inside of a <|det|>...<|/det|> -> list of boxes, or None if it is not exactly well-formed."""
    if not BOXES.fullmatch(det):
        return None
    boxes = [tuple(int(v) for v in m.groups()) for m in BOX.finditer(det)]
    for x1, y1, x2, y2 in boxes:
        if max(x1, y1, x2, y2) > 999 or x2 < x1 or y2 < y1:
            return None
    return boxes


def parse_grounded(text):
    """Model output -> (blocks, plain). `plain` is the text with the well-formed headers (and any stray
    grounding markers) removed; it equals the text before the first block followed by every block's text,
    which is what to_markdown relies on. Never raises on str input; text with no grounding gives ([], text)."""
    blocks, pieces, pos = [], [], 0
    for m in HEADER.finditer(text):
        boxes = parse_boxes(m.group(2))
        if boxes is None:
            continue  # malformed: left in place, so it is read as part of the surrounding text
        body = MARKERS.sub("", text[pos:m.start()])
        if blocks:
            blocks[-1].text = body
        else:
            pieces.append(body)
        blocks.append(Block(m.group(1).strip(), boxes, ""))
        pos = m.end()
    body = MARKERS.sub("", text[pos:])
    if blocks:
        blocks[-1].text = body
    else:
        pieces.append(body)
    return blocks, "".join(pieces + [b.text for b in blocks])


def to_pixels(box, width, height):
    """A 0..999 box -> integer pixels (x1, y1, x2, y2) covering it in a width x height image, inside the
    image. A box of positive area always covers at least one pixel each way."""
    x1, y1, x2, y2 = (int(v) for v in box)
    width, height = int(width), int(height)
    clamp = lambda v, hi: min(max(v, 0), hi)
    # integer floor and ceiling: exact, where floats could put 999 one pixel past the edge
    return (clamp(x1 * width // 999, width), clamp(y1 * height // 999, height),
            clamp(-(-x2 * width // 999), width), clamp(-(-y2 * height // 999), height))


def is_figure(block):
    return block.label.strip().lower() in FIGURE_LABELS


def figure_boxes(blocks):
    """(block index, box) of every figure box that has an area. crop_figures writes one file for each, in
    this order, and to_markdown links them in the same order: both follow this one rule."""
    return [(i, box) for i, b in enumerate(blocks) if is_figure(b) for box in b.boxes
            if box[2] > box[0] and box[3] > box[1]]


def _color(label):
    # crc32, not hash(): the same label gets the same colour in every process
    return COLORS[zlib.crc32(label.encode("utf-8")) % len(COLORS)]


def _font(size):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # an old Pillow, or one without FreeType: its small bitmap font
        return ImageFont.load_default()


def _draw_label(draw, xy, label, color, font):
    try:
        l, t, r, b = draw.textbbox((0, 0), label, font=font)
    except UnicodeError:  # the bitmap font is Latin-1 only
        label = label.encode("ascii", "replace").decode("ascii")
        l, t, r, b = draw.textbbox((0, 0), label, font=font)
    x, y = xy
    y = max(0, y - (b - t) - 2)  # above the box if there is room, else over its top edge
    draw.rectangle((x, y, x + r - l + 3, y + b - t + 2), fill=color)
    draw.text((x + 1 - l, y + 1 - t), label, fill=(255, 255, 255), font=font)


def draw_boxes(image, blocks):
    """A copy of `image` (RGB) with every box outlined, a colour per label, the label at its top-left."""
    out = image.convert("RGB")  # always a new image, even from RGB
    draw = ImageDraw.Draw(out)
    w, h = out.size
    line = max(1, round(min(w, h) / 400))
    font = _font(max(10, min(w, h) // 60))
    for b in blocks:
        color = _color(b.label)
        for box in b.boxes:
            x1, y1, x2, y2 = to_pixels(box, w, h)
            draw.rectangle((x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)), outline=color, width=line)
            if b.label:
                _draw_label(draw, (x1, y1), b.label, color, font)
    return out


def crop_figures(image, blocks, out_dir, name):
    """Each figure box (see figure_boxes) cropped to `out_dir/{name}_fig{k}.png`, k from 1; the paths, in
    order. Boxes with no area are skipped, and to_markdown skips them in the same way."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, (_, box) in enumerate(figure_boxes(blocks), 1):
        path = out / f"{name}_fig{k}.png"
        image.crop(to_pixels(box, *image.size)).convert("RGB").save(path)
        paths.append(str(path))
    return paths


def to_markdown(blocks, plain, figure_links=None):
    """Clean markdown of a page: the text before the first block, then each block's text; a figure box
    becomes ![](link), taking figure_links in crop_figures' order (none given: no image link)."""
    if not blocks:
        return plain
    links = iter(figure_links or ())
    by_block = {}
    for i, _ in figure_boxes(blocks):
        link = next(links, None)
        if link is not None:
            by_block.setdefault(i, []).append(f"![]({link})")
    body = "".join(b.text for b in blocks)
    head = plain[:len(plain) - len(body)] if plain.endswith(body) else ""
    parts = [head.strip()]
    for i, b in enumerate(blocks):
        parts += by_block.get(i, []) + [b.text.strip()]
    return "\n\n".join(p for p in parts if p)
