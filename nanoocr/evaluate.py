"""
Evaluation: read a set of pages with a model and score the text against the ground truth.

Sets (`--data`):
  FILE.jsonl             our manifest: {"image", "text", "prompt"?, "kind"?} per line (paths relative to it)
  synth:heldout:KIND:N   N held-out synthetic samples of one kind (fonts and text never trained on)
  fox:DIR                a local copy of Fox: a JSON list of {"image", "conversations": [human, gpt]} in DIR,
                         images found by file name anywhere under DIR (e.g. focus_benchmark_test/en_pdf_png/)
  omnidoc:DIR            a local copy of OmniDocBench: DIR/OmniDocBench.json + DIR/images/; the reference is
                         the page's text blocks joined in reading order (an approximation of the official
                         toolkit's matching; use it for trends, the toolkit for published numbers)
Writes per-sample JSONL, a summary table (per kind), and the compression table: Fox-style precision
per bucket of text tokens per vision token, the paper's main figure at our scale.
"""

import json
import math
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch
from tqdm import tqdm

from nanoocr import metrics
from nanoocr.image import vision_grid_tokens

BUCKETS = [(0, 1), (1, 2), (2, 4), (4, 6), (6, 8), (8, 10), (10, 12), (12, 16), (16, 20), (20, math.inf)]


# ----------------------------------------------------------------------------- eval sets

def _manifest(path):
    from nanoocr.data import _open_image
    path = Path(path)
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        row = json.loads(line)
        yield {"id": f"{path.name}:{i + 1}", "load": lambda r=row: _open_image(r["image"], path.parent),
               "ref": row["text"], "prompt": row.get("prompt", "free"), "kind": row.get("kind", "page")}


def _synth(split, kind, n):
    from nanoocr.synth import SynthConfig, generate
    cfg = SynthConfig(kinds={kind: 1.0})
    for i in range(n):
        s = generate(i, cfg, split)
        yield {"id": f"synth:{split}:{kind}:{i}", "load": lambda s=s: s.image, "ref": s.text, "prompt": s.prompt,
               "kind": kind}


def _fox(root):
    from nanoocr.data import _open_image
    root = Path(root)
    files = {p.name: p for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")}
    for js in sorted(root.glob("*.json")):
        for i, row in enumerate(json.loads(js.read_text(encoding="utf-8"))):
            conv = row.get("conversations") or []
            ref = next((c["value"] for c in conv if c.get("from") in ("gpt", "assistant")), None)
            name = Path(row.get("image", "")).name
            if ref is None or name not in files:
                continue
            yield {"id": f"fox:{js.stem}:{i}", "load": lambda p=files[name]: _open_image(str(p), None), "ref": ref,
                   "prompt": "free", "kind": js.stem}


def _omnidoc(root):
    from nanoocr.data import _open_image
    root = Path(root)
    skip = {"abandon", "figure", "table", "isolate_formula", "header", "footer", "page_number", "page_footnote"}
    for i, page in enumerate(json.loads((root / "OmniDocBench.json").read_text(encoding="utf-8"))):
        dets = [d for d in page.get("layout_dets", []) if d.get("category_type") not in skip and d.get("text")]
        dets.sort(key=lambda d: d.get("order") if d.get("order") is not None else 1e9)
        img = root / "images" / Path(page["page_info"]["image_path"]).name
        yield {"id": f"omnidoc:{i}", "load": lambda p=img: _open_image(str(p), None),
               "ref": "\n\n".join(d["text"] for d in dets), "prompt": "md", "kind": "omnidoc"}


def eval_set(spec):
    if spec.startswith("synth:"):
        _, split, kind, n = spec.split(":")
        return _synth(split, kind, int(n))
    if spec.startswith("fox:"):
        return _fox(spec[4:])
    if spec.startswith("omnidoc:"):
        return _omnidoc(spec[8:])
    return _manifest(spec)


# ----------------------------------------------------------------------------- scoring

def score_rows(rows):
    """Per-kind summary of scored rows."""
    by_kind = defaultdict(list)
    for r in rows:
        by_kind[r["kind"]].append(r)
    by_kind["all"] = rows
    return {k: metrics.corpus_scores([(r["pred"], r["ref"]) for r in v]) for k, v in by_kind.items() if v}


def compression_table(rows):
    out = []
    for lo, hi in BUCKETS:
        sel = [r for r in rows if lo <= r["compression"] < hi]
        if sel:
            s = metrics.corpus_scores([(r["pred"], r["ref"]) for r in sel])
            out.append({"bucket": f"{lo}-{hi if hi != math.inf else ''}x", "n": len(sel),
                        "precision": s["precision"], "cer": s["cer"]})
    return out


def evaluate(reader, samples, batch_size=8, limit=None, out_path=None, prompt=None, progress=True):
    """Read and score samples; returns (rows, summary). Unreadable images are reported, not fatal."""
    cfg, mode = reader.model.config, reader.mode
    rows, failures = [], []
    samples = list(samples)[:limit] if limit else list(samples)
    groups = defaultdict(list)  # one prompt per generation batch
    for s in samples:
        groups[prompt or s["prompt"]].append(s)
    bar = tqdm(total=len(samples), desc="eval", disable=not progress)
    t0 = time.time()
    for p, group in groups.items():
        for i in range(0, len(group), batch_size):
            batch, images = [], []
            for s in group[i:i + batch_size]:
                try:
                    images.append(s["load"]())
                    batch.append(s)
                except Exception as e:  # one bad page never loses the rest
                    failures.append({"id": s["id"], "error": str(e)})
            if not batch:
                continue
            for s, im, res in zip(batch, images, reader.read(images, prompt=p)):
                row = {"id": s["id"], "kind": s["kind"], "prompt": p, "ref": s["ref"], "pred": res.text,
                       "cer": metrics.cer(res.text, s["ref"]), "ned": metrics.ned(res.text, s["ref"]),
                       "precision": metrics.fox_precision(res.text, s["ref"]),
                       "text_tokens": len(reader.tok.encode(s["ref"])),
                       "vision_tokens": vision_grid_tokens(im.width, im.height, mode, cfg), "seconds": res.seconds}
                row["compression"] = row["text_tokens"] / row["vision_tokens"]
                rows.append(row)
            bar.update(len(batch))
    bar.close()
    summary = {"mode": mode, "n": len(rows), "failed": failures, "seconds": time.time() - t0,
               "by_kind": score_rows(rows) if rows else {}, "compression": compression_table(rows)}
    if out_path:
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with open(out_path, "w") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return rows, summary


@torch.no_grad()
def bits_per_byte(model, tokenizer, texts, device="cpu", seq_len=None):
    """Decoder bits per UTF-8 byte on plain text (language retention: compare before/after Phase 2)."""
    model.eval()
    seq_len = seq_len or model.config.gpt.sequence_len
    nats, nbytes = 0.0, 0
    for text in texts:
        ids = [tokenizer.bos_id] + tokenizer.encode(text)
        for i in range(0, len(ids) - 1, seq_len):
            chunk = torch.tensor(ids[i:i + seq_len + 1], device=device)[None]
            nats += model.gpt(chunk[:, :-1], chunk[:, 1:], loss_reduction="sum").item()
        nbytes += len(text.encode("utf-8"))
    return nats / math.log(2) / max(1, nbytes)


@torch.no_grad()
def image_reliance(model, tokenizer, manifest, mode="base", n=16):
    """Decoder loss (nats/token) on a manifest's first n samples with their own images, and with each sample's
    image swapped for the next one's. Equal losses mean the model writes from its language prior and ignores
    the page (the failure of the system this project is specified from); a reader's loss rises sharply."""
    from nanoocr.data import DataConfig, JsonlSource, Mixture, OCRDataset, collate
    model.eval()
    ds = OCRDataset(Mixture([JsonlSource(manifest)]), tokenizer, model.config,
                    DataConfig(mode, model.config.gpt.sequence_len))
    items = [it for it in (ds[k] for k in range(n)) if "skip" not in it]
    # only same-size vision sequences can swap places: keep the commonest token count
    counts = [int((it["ids"] == tokenizer.image_id).sum()) for it in items]
    common = Counter(counts).most_common(1)[0][0] if items else None
    items = [it for it, c in zip(items, counts) if c == common]
    if len(items) < 2:
        raise ValueError(f"{manifest}: fewer than 2 usable samples with the same number of vision tokens")
    own, swapped = collate(items), collate(items[1:] + items[:1])
    a = model(own["inputs"], own["targets"], views=own["views"]).item()
    b = model(own["inputs"], own["targets"], views=swapped["views"]).item()
    return {"own": a, "swapped": b, "n": len(items)}


def format_summary(summary):
    lines = ["| set | n | CER | WER | NED | precision | exact |", "|---|---|---|---|---|---|---|"]
    for k, s in summary["by_kind"].items():
        lines.append(f"| {k} | {s['n']} | {100 * s['cer']:.2f}% | {100 * s['wer']:.2f}% | {s['ned']:.3f} | "
                     f"{100 * s['precision']:.1f}% | {100 * s['exact']:.1f}% |")
    if summary["compression"]:
        lines += ["", "| text tokens / vision token | n | precision | CER |", "|---|---|---|---|"]
        lines += [f"| {c['bucket']} | {c['n']} | {100 * c['precision']:.1f}% | {100 * c['cer']:.2f}% |"
                  for c in summary["compression"]]
    return "\n".join(lines)


def add_args(p):
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--data", nargs="+", required=True, help="FILE.jsonl | synth:heldout:KIND:N | fox:DIR | omnidoc:DIR")
    p.add_argument("--mode", default="base")
    p.add_argument("--prompt", default=None, help="override every sample's prompt")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="folder for per-sample JSONL + summary.json")
    p.add_argument("--compare", choices=["tesseract"], default=None,
                   help="also score the tesseract binary on the same samples and print it beside our model")


def compare_tesseract(samples, out, progress=True):
    """Score tesseract on the same samples, one page segmentation mode per kind; None (with the reason
    printed) when the binary is missing."""
    from nanoocr.tesseract import TesseractMissing, TesseractReader
    try:
        tess = TesseractReader()
    except TesseractMissing as e:
        print(f"compare: {e}")
        return None
    rows, failed, t0 = [], [], time.time()
    for s in tqdm(samples, desc="tesseract", disable=not progress):
        try:
            pred = tess.read_one(s["load"](), s["kind"]).text
        except Exception as e:  # a page tesseract cannot read is one more failure, not the end of the run
            failed.append({"id": s["id"], "error": str(e)})
            continue
        rows.append({"id": s["id"], "kind": s["kind"], "ref": s["ref"], "pred": pred,
                     "cer": metrics.cer(pred, s["ref"])})
    if out:
        with open(out, "w") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return {"engine": tess.version, "n": len(rows), "failed": failed, "seconds": time.time() - t0,
            "by_kind": score_rows(rows) if rows else {}}


def format_comparison(ours, theirs):
    lines = [f"| set | n | nanoocr CER | {theirs['engine']} CER | nanoocr exact | tesseract exact |",
             "|---|---|---|---|---|---|"]
    for k, s in ours["by_kind"].items():
        t = theirs["by_kind"].get(k)
        if t:
            lines.append(f"| {k} | {s['n']} | {100 * s['cer']:.2f}% | {100 * t['cer']:.2f}% | "
                         f"{100 * s['exact']:.1f}% | {100 * t['exact']:.1f}% |")
    return "\n".join(lines)


def main(args):
    from nanoocr.reader import Reader
    reader = Reader.from_dir(args.model, device=args.device, mode=args.mode, max_new_tokens=args.max_new_tokens)
    code = 0
    for spec in args.data:
        path = Path(spec.replace(":", "_"))
        name = path.parent.name if path.name == "manifest.jsonl" else path.stem
        out = Path(args.out) / f"{name}.jsonl" if args.out else None
        samples = list(eval_set(spec))[:args.limit] if args.limit else list(eval_set(spec))
        rows, summary = evaluate(reader, samples, args.batch_size, None, out, args.prompt)
        print(f"\n{spec}: {summary['n']} samples in {summary['seconds']:.1f}s")
        print(format_summary(summary))
        for f in summary["failed"]:
            print(f"failed: {f['id']}: {f['error']}")
            code = 1
        if args.compare == "tesseract":
            theirs = compare_tesseract(samples, Path(args.out) / f"{name}.tesseract.jsonl" if args.out else None)
            if theirs is not None:
                summary["tesseract"] = theirs
                print(f"\nbeside {theirs['engine']} ({theirs['n']} samples in {theirs['seconds']:.1f}s):")
                print(format_comparison(summary, theirs))
                for f in theirs["failed"]:
                    print(f"tesseract failed: {f['id']}: {f['error']}")
        if args.out:
            (Path(args.out) / f"{name}.summary.json").write_text(json.dumps(summary, indent=2))
    return code
