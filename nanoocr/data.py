"""
Training data: sources -> a deterministic mixture -> rendered conversations + image views -> batches.

Every source is indexable, and sample k of the mixture depends only on (seed, k), so a run can
resume at any sample and every DDP rank reads its own slice without coordination. Bad samples
(missing or broken images, empty conversations, image tokens that don't fit) are skipped and counted.
"""

import bisect
import hashlib
import json
import math
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nanoocr.image import cell_px, collate_views, make_views, num_image_tokens, token_grids, view_geometry
from nanoocr.prompts import prompt_text


class BadSample(Exception):
    """A sample that cannot be used; the message says which file/field and why. `reason` is the short
    kind of problem (no file names, no line numbers), which SkipLog counts by."""

    def __init__(self, message, reason=None):
        super().__init__(message)
        self.reason = reason or message


def _rng(*parts):
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(h, "little"))


def _open_image(src, base):
    """A training/eval image -> RGB, decoded exactly as `nanoocr ocr` and `serve` decode pages (EXIF upright,
    transparency on white, the same pixel limit), so a model sees at test time what it was trained on."""
    from nanoocr.inputs import InputError, load_image, to_rgb_page
    try:
        if isinstance(src, Image.Image):
            return to_rgb_page(src, "image")
        if isinstance(src, dict) and "bytes" in src:  # datasets' encoded image form
            return load_image(src["bytes"], name="image bytes")
        if not isinstance(src, (str, Path)):
            raise BadSample(f"image must be a path, got {type(src).__name__}", "image is not a path")
        path = Path(base) / src if base else Path(src)
        return load_image(path, name=str(path))
    except InputError as e:
        reason = "image not found" if "no such file" in e.problem else "unreadable image"
        raise BadSample(f"{reason}: {e}", reason) from None


def ocr_messages(text, prompt="free"):
    return [{"role": "user", "content": prompt_text(prompt)}, {"role": "assistant", "content": text}]


# ----------------------------------------------------------------------------- sources

class JsonlSource:
    """A JSONL manifest. Each line is either {"images": [...], "messages": [...]} or the plain OCR form
    {"image": path, "text": ..., "prompt"?: name}. Image paths are relative to the manifest."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"manifest not found: {self.path}")
        self.lines = self.path.read_text(encoding="utf-8").splitlines()
        self.lines = [line for line in self.lines if line.strip()]

    def __len__(self):
        return len(self.lines)

    def __getitem__(self, i):
        where = f"{self.path}:{i + 1}"
        try:
            row = json.loads(self.lines[i])
        except json.JSONDecodeError as e:
            raise BadSample(f"{where}: invalid JSON ({e})", "invalid JSON") from e
        images, messages = _row_fields(row, where)
        return {"images": [_open_image(s, self.path.parent) for s in images], "messages": messages, "where": where}


def _row_fields(row, where):
    """(image sources, messages) of one manifest row; BadSample for valid JSON of the wrong shape."""
    def bad(problem):
        return BadSample(f"{where}: {problem}", "wrong row shape")
    if not isinstance(row, dict):
        raise bad(f"a row must be a JSON object, got {type(row).__name__}")
    if "messages" in row:
        images, messages = row.get("images") or [], row["messages"]
        if not isinstance(images, list) or not all(isinstance(s, str) for s in images):
            raise bad("'images' must be a list of paths")
    elif "image" in row and "text" in row:
        if not isinstance(row["image"], str) or not isinstance(row["text"], str):
            raise bad("'image' and 'text' must be strings")
        if not isinstance(row.get("prompt", "free"), str):
            raise bad("'prompt' must be a string")
        images, messages = [row["image"]], ocr_messages(row["text"], row.get("prompt", "free"))
    else:
        raise bad("needs 'messages' or 'image' + 'text'")
    check_messages(messages, where)
    return images, messages


def check_messages(messages, where):
    """A list of {"role": str, "content": str} turns, or BadSample naming the turn."""
    if not isinstance(messages, list):
        raise BadSample(f"{where}: 'messages' must be a list of turns, got {type(messages).__name__}",
                        "wrong row shape")
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise BadSample(f"{where}: turn {i} must be an object with string 'role' and 'content'",
                            "wrong row shape")


class HFSource:
    """A local Hugging Face dataset (save_to_disk folder, or parquet files) in the FineVision layout:
    `images` (list of images) + `texts` (list of {"user": ..., "assistant": ...} turns)."""

    def __init__(self, path, split="train"):
        import datasets
        p = Path(path)
        if (p / "dataset_info.json").exists() or (p / "state.json").exists() or (p / "dataset_dict.json").exists():
            ds = datasets.load_from_disk(str(p))
            self.ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        else:
            files = sorted(str(f) for f in ([p] if p.is_file() else p.rglob("*.parquet")))
            if not files:
                raise FileNotFoundError(f"no dataset (save_to_disk folder or parquet files) at {p}")
            self.ds = datasets.load_dataset("parquet", data_files=files, split="train")
        self.path = p

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        row, where = self.ds[i], f"{self.path}[{i}]"
        messages = []
        for turn in row.get("texts") or []:
            if not isinstance(turn, dict):
                raise BadSample(f"{where}: a turn of 'texts' must be an object", "wrong row shape")
            messages += [{"role": "user", "content": turn.get("user", "")},
                         {"role": "assistant", "content": turn.get("assistant", "")}]
        images = [_open_image(im, None) for im in row.get("images") or []]
        # FineVision turns don't mark where the image goes: put all images before the first question
        check_messages(messages, where)
        if images and messages and "<image>" not in messages[0]["content"]:
            messages[0]["content"] = "<image>\n" * len(images) + messages[0]["content"]
        return {"images": images, "messages": messages, "where": where}


class TextChatSource(JsonlSource):
    """Text-only chat JSONL (SmolTalk style: {"messages": [...]}), mixed in to keep the decoder's language."""

    def __getitem__(self, i):
        ex = super().__getitem__(i)
        if ex["images"]:
            raise BadSample(f"{ex['where']}: text chat source has images", "text chat source has images")
        return ex


class SynthSource:
    """Synthetic documents made on the fly: effectively infinite, sample i is always the same."""

    def __init__(self, cfg=None, split="train", size=10**9):
        from nanoocr.synth import SynthConfig
        self.cfg, self.split, self.size = cfg or SynthConfig(), split, size

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        from nanoocr.synth import generate
        s = generate(i, self.cfg, self.split)
        return {"images": [s.image], "messages": ocr_messages(s.text, s.prompt), "where": f"synth:{self.split}:{i}",
                "glyphs": s.glyphs}


def open_source(spec, synth_cfg=None):
    """'synth', 'synth:heldout', a .jsonl manifest, 'text:FILE.jsonl', or a local HF dataset folder."""
    if spec.startswith("synth"):
        return SynthSource(synth_cfg, split=spec.partition(":")[2] or "train")
    if spec.startswith("text:"):
        return TextChatSource(spec[5:])
    if spec.endswith(".jsonl"):
        return JsonlSource(spec)
    return HFSource(spec)


# ----------------------------------------------------------------------------- mixture + dataset

class Mixture:
    """Sample k -> (source, item), a pure function of (seed, k). Finite sources are read in a fresh
    shuffled order each epoch when alone; in a mix each draw picks an item at random."""

    def __init__(self, sources, weights=None, seed=0):
        self.sources = list(sources)
        for src in self.sources:
            if len(src) == 0:
                raise ValueError(f"{getattr(src, 'path', src)}: no samples (an empty manifest or dataset)")
        w = list(weights or [1.0] * len(self.sources))
        if len(w) != len(self.sources) or any(not (x >= 0 and math.isfinite(x)) for x in w) or sum(w) <= 0:
            raise ValueError(f"mixture weights {w}: need one finite weight >= 0 per source, not all zero")
        total = sum(w)
        self.cum = [sum(w[: i + 1]) / total for i in range(len(w))]
        self.seed = seed
        self._epoch_perm = (None, None)

    def locate(self, k):
        rng = _rng(self.seed, k)
        # one draw, one bisect: a draw per candidate source would skew every weight after the first
        s = 0 if len(self.sources) == 1 else min(bisect.bisect_right(self.cum, rng.random()), len(self.cum) - 1)
        src = self.sources[s]
        n = len(src)
        if len(self.sources) == 1:
            epoch, j = divmod(k, n)
            if n < 10**8:  # a shuffled order per epoch for finite data
                j = int(self._perm(epoch, n)[j])
            return src, j
        return src, rng.randrange(n)

    def _perm(self, epoch, n):
        # built once per epoch (per worker), not once per sample
        if self._epoch_perm[0] != epoch:
            g = np.random.default_rng(list(_rng(self.seed, "epoch", epoch).getrandbits(32) for _ in range(4)))
            self._epoch_perm = (epoch, g.permutation(n))
        return self._epoch_perm[1]


@dataclass
class DataConfig:
    mode: str = "base"
    seq_len: int = 512
    glyphs: bool = False  # also label every vision token for the dense reading loss (glyph_targets)


class OCRDataset(torch.utils.data.Dataset):
    """Map-style view of the mixture: item k -> rendered sample, or a skip record."""

    def __init__(self, mixture, tokenizer, model_cfg, data_cfg):
        self.mix, self.tok, self.cfg, self.dcfg = mixture, tokenizer, model_cfg, data_cfg
        self._char_ids, self._drawn = {}, {}

    def __len__(self):
        return 2**62

    def __getitem__(self, k):
        src, i = self.mix.locate(k)
        try:
            return self.render(src[i])
        except BadSample as e:
            return {"skip": str(e), "reason": e.reason}
        except ValueError as e:  # tokenizer: placeholder mismatch, image run cut by truncation, ...
            return {"skip": f"sample {k}: {e}", "reason": re.sub(r"\d+", "N", str(e))[:60]}

    def render(self, ex):
        check_messages(ex["messages"], ex.get("where", "?"))
        if not any(m["role"] == "assistant" and m["content"].strip() for m in ex["messages"]):
            raise BadSample(f"{ex.get('where', '?')}: empty conversation", "empty conversation")
        counts = [num_image_tokens(im.width, im.height, self.dcfg.mode, self.cfg) for im in ex["images"]]
        ids, mask = self.tok.render_conversation(ex["messages"], counts)
        truncated = len(ids) > self.dcfg.seq_len + 1
        if truncated:
            if sum(counts) + 8 > self.dcfg.seq_len:
                raise BadSample(f"{ex.get('where', '?')}: {sum(counts)} image tokens exceed seq_len "
                                f"{self.dcfg.seq_len}", "image tokens exceed seq_len")
            ids, mask = ids[: self.dcfg.seq_len + 1], mask[: self.dcfg.seq_len + 1]
            if ids.count(self.tok.image_id) != sum(counts):  # an image in a late turn was cut
                raise BadSample(f"{ex.get('where', '?')}: truncation to seq_len {self.dcfg.seq_len} cuts an image",
                                "truncation cuts an image")
        views = [make_views(im, self.dcfg.mode, self.cfg) for im in ex["images"]]
        item = {"ids": torch.tensor(ids), "mask": torch.tensor(mask, dtype=torch.bool), "views": views,
                "truncated": truncated}
        if self.dcfg.glyphs:  # labels where the source knows its glyphs (one synthetic image), -1 elsewhere
            known = ex.get("glyphs") is not None and len(ex["images"]) == 1 and self.dcfg.mode != "gundam"
            item["glyphs"] = (glyph_targets(ex["glyphs"], ex["images"][0].size, self.dcfg.mode, self.cfg,
                                            self._char_id) if known else torch.full((sum(counts), GLYPH_SLOTS), -1))
            item["cells"] = (token_cells(ids, mask, ex["glyphs"], ex["images"][0].size, self) if known
                             else torch.full((len(ids),), -1))
        return item

    def drawn_chars(self, token):
        """How many drawn (non-space) characters a token spells; cached, the answer tokens repeat."""
        n = self._drawn.get(token)
        if n is None:
            n = self._drawn[token] = sum(not c.isspace() for c in self.tok.decode([token]))
        return n

    def _char_id(self, c):
        ids = self._char_ids.get(c)
        if ids is None:
            ids = self._char_ids[c] = self.tok.encode(c)
        return ids[0] if len(ids) == 1 else -1


def glyph_grid(glyphs, size, mode, cfg):
    """Where each glyph centre falls in the global view's token grid: (g, col (n,), row (n,)); may be outside."""
    (g, _), = token_grids(*size, mode, cfg)
    cell = cell_px(cfg)
    sx, sy, ox, oy = view_geometry(*size, mode, cfg)
    xy = np.array([(x, y) for _, x, y in glyphs], dtype=np.float64).reshape(-1, 2)
    return (g, np.floor((xy[:, 0] * sx + ox) / cell).astype(np.int64),
            np.floor((xy[:, 1] * sy + oy) / cell).astype(np.int64))


def token_cells(ids, mask, glyphs, size, ds):
    """(len(ids),) for the alignment loss: at each answer token, the sequence position of the vision token whose
    cell holds the centre of the character the token spells (its first non-space character), -1 elsewhere.
    The generator lists glyphs in text order without spaces, so the k-th drawn character is the k-th glyph."""
    g, col, row = glyph_grid(glyphs, size, ds.dcfg.mode, ds.cfg)
    inside = (col >= 0) & (col < g) & (row >= 0) & (row < g)
    # + the layout's newline token after each row; -1 for a glyph outside the grid
    where = np.append(np.where(inside, ids.index(ds.tok.image_id) + row * (g + 1) + col, -1), -1)
    answer = np.flatnonzero(np.asarray(mask, dtype=bool))
    n_chars = np.array([ds.drawn_chars(ids[p]) for p in answer], dtype=np.int64)
    first = np.minimum(np.cumsum(n_chars) - n_chars, len(glyphs))  # index of each token's first glyph
    out = np.full(len(ids), -1, dtype=np.int64)
    out[answer] = np.where(n_chars > 0, where[first], -1)
    return torch.from_numpy(out)


GLYPH_SLOTS = 3  # characters a vision token is asked to name, left to right (body text puts 1-2 in a cell)


def glyph_targets(glyphs, size, mode, cfg, char_id, slots=GLYPH_SLOTS):
    """Labels of one image's vision tokens (layout tokens included) for the dense reading loss, (n, slots): slot k
    of a token is the k-th character (in reading order) whose centre lies in its cell, and the space token once a
    cell with characters has no k-th one; an empty cell of the page is a space in slot 0 only (as many space
    labels as before slots, so they do not drown the characters); -1 (no loss) for cells of padding and for the
    newline/separator tokens. A cell of body text holds 1-2 centres: labelling only the cells with one left 59 %
    of the characters without a label."""
    if mode == "gundam":
        raise ValueError("glyph labels: gundam's local crops are not labelled; use base, large, tiny or small")
    g, gx, gy = glyph_grid(glyphs, size, mode, cfg)
    cell = cell_px(cfg)
    sx, sy, ox, oy = view_geometry(*size, mode, cfg)
    cells = np.full((g, g, slots), -1, dtype=np.int64)
    x0, y0, x1, y1 = (math.floor(v / cell) for v in (ox, oy, ox + size[0] * sx - 1, oy + size[1] * sy - 1))
    cells[max(0, y0):y1 + 1, max(0, x0):x1 + 1, 0] = char_id(" ")  # the page's cells; padding stays -1
    if glyphs:
        ok = (gx >= 0) & (gx < g) & (gy >= 0) & (gy < g)
        ids = np.array([char_id(c) for c, _, _ in glyphs], dtype=np.int64)[ok]
        flat = (gy * g + gx)[ok]
        order = np.argsort(flat, kind="stable")  # by cell, reading order kept within a cell
        flat, ids = flat[order], ids[order]
        first = np.unique(flat, return_index=True)[1]
        rank = np.arange(len(flat)) - np.repeat(first, np.diff(np.append(first, len(flat))))
        keep = rank < slots
        flat_cells = cells.reshape(g * g, slots)
        flat_cells[flat[rank == 0], 1:] = char_id(" ")  # "no further character", unless one follows
        flat_cells[flat[keep], rank[keep]] = ids[keep]
    layout = np.full((g, g + 1, slots), -1, dtype=np.int64)  # + the newline column
    layout[:, :g] = cells
    return torch.from_numpy(np.concatenate([layout.reshape(-1, slots), np.full((1, slots), -1)]))  # + separator


def collate(items):
    """-> dict(inputs (B, T), targets (B, T) with -1 where no loss, views ViewBatch|None, skips, ...)."""
    skips = [it["skip"] for it in items if "skip" in it]
    reasons = [it.get("reason", it["skip"]) for it in items if "skip" in it]
    items = [it for it in items if "skip" not in it]
    if not items:
        return {"inputs": None, "skips": skips, "skip_reasons": reasons, "truncated": 0}
    T = max(len(it["ids"]) for it in items) - 1
    inputs = torch.zeros(len(items), T, dtype=torch.long)
    targets = torch.full((len(items), T), -1, dtype=torch.long)
    for r, it in enumerate(items):  # one row copy per sample, not per token
        ids, mask = it["ids"], it["mask"]
        n = len(ids) - 1
        inputs[r, :n] = ids[:-1]
        targets[r, :n] = torch.where(mask[1:], ids[1:], -1)
    views = [v for it in items for v in it["views"]]
    batch = {"inputs": inputs, "targets": targets, "views": collate_views(views), "skips": skips,
             "skip_reasons": reasons, "truncated": sum(it["truncated"] for it in items), "samples": len(items)}
    if "glyphs" in items[0]:
        batch["glyphs"] = torch.cat([it["glyphs"] for it in items])  # (n_vision_tokens, slots), as the vision tokens
        batch["glyph_cells"] = int((batch["glyphs"] >= 0).sum())
        cells = torch.full((len(items), T + 1), -1, dtype=torch.long)
        for r, it in enumerate(items):
            n = min(len(it["cells"]), T + 1)
            cells[r, :n] = it["cells"][:n]
        batch["align"] = torch.stack([cells[:, :-1], cells[:, 1:]])  # (2, B, T): input's char, next char
        batch["align_keys"] = int((batch["align"] >= 0).sum())
    return batch


class ShardSampler(torch.utils.data.Sampler):
    """Sample indices start, start+1, ... split round-robin over DDP ranks: resumable at any sample."""

    def __init__(self, start=0, rank=0, world=1):
        self.start, self.rank, self.world = start, rank, world

    def __iter__(self):
        k = self.start + self.rank
        while True:
            yield k
            k += self.world

    def __len__(self):
        return 2**62


def make_loader(dataset, batch_size, start=0, rank=0, world=1, workers=1, pin=False):
    """Batches for one rank, beginning at global sample `start` (= samples consumed so far)."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=ShardSampler(start, rank, world), collate_fn=collate,
        num_workers=workers, pin_memory=pin, persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None)


class SkipLog:
    """Counts skipped samples by reason (first words) and keeps a few full examples."""

    def __init__(self):
        self.counts, self.examples, self.truncated = Counter(), [], 0

    def add(self, batch):
        self.truncated += batch.get("truncated", 0)
        # counted by kind of problem, not by file or line: the reasons are few, the lines are many
        for s, reason in zip(batch["skips"], batch.get("skip_reasons", batch["skips"])):
            self.counts[reason[:60]] += 1
            if len(self.examples) < 5:
                self.examples.append(s)

    def summary(self):
        return {"skipped": sum(self.counts.values()), "by_reason": dict(self.counts),
                "examples": self.examples, "truncated": self.truncated}
