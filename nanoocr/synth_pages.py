"""
Drawing the synthetic pages: a document being drawn (its boxes and every glyph's centre), colours, and
the page kinds (line, paragraph, columns, receipt, table, heading, layout), each a function of a
PageContext that returns the page's blocks. synth.generate picks a kind and assembles the Sample.
"""

import itertools
import math

from PIL import Image, ImageDraw

from nanoocr.synth_text import BAD_CHARS, BOLD, NoFit, WordStream, advance, face_font, plain_word, v_extent, wrap

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


class PageContext:
    """What a kind needs: the rng, the config, the corpus words, and the split's fonts."""

    def __init__(self, rng, cfg, words, faces):
        self.rng, self.cfg, self.words = rng, cfg, words
        self.face = rng.choice(faces)
        bold = BOLD.get(self.face, self.face)
        self.bold = bold if bold in faces else self.face  # never borrow a face from the other split
        self.bad = set(BAD_CHARS.get(self.face, "")) | set(BAD_CHARS.get(self.bold, ""))
        self.size = rng.randint(*cfg.font_size)
        self.font = face_font(self.face, self.size)
        self.paper, self.ink = _colors(rng)
        self.doc = _Doc(self.ink)

    def stream(self, pred=None):
        return WordStream(self.rng, self.words, self.bad, pred)

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
        stream = self.stream(plain_word)
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

    shop = " ".join(ctx.stream(plain_word).pop().capitalize() for _ in range(rng.randint(1, 2)))
    centred(shop + rng.choice(["", " Market", " Cafe", " Store", " & Co", " Books", " Deli"]), bold)
    if rng.random() < 0.7:
        centred(f"{rng.randint(2015, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} "
                f"{rng.randint(7, 22):02d}:{rng.randint(0, 59):02d}", font)
    dashes()
    total, stream = 0.0, ctx.stream(plain_word)
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
    stream, font = ctx.stream(plain_word), ctx.font
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


DRAW_KIND = {"line": _line, "paragraph": _paragraph, "columns": _columns, "receipt": _receipt, "table": _table,
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


