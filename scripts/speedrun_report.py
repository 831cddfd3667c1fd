"""
Write the CPU speedrun's report.md: timings, held-out accuracy against the targets, the compression
table, language retention (bits per byte before/after Phase 2), loss curves, and a page with the
predicted text next to the truth.

  python -m scripts.speedrun_report --base ~/.cache/nanoocr/cpu-speedrun --total-seconds 840
"""

import argparse
import json
import os
import platform
import textwrap
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--base", required=True, help="the speedrun folder")
parser.add_argument("--total-seconds", type=int, default=None)
parser.add_argument("--bpb-paragraphs", type=int, default=40, help="held-out corpus paragraphs for bits/byte")

TARGETS = {"line": 0.10, "paragraph": 0.20, "random": 0.20}  # held-out CER targets of the speedrun
SETS = ("line", "paragraph", "random")  # data/heldout_{set}/: random = random-character lines, no language to guess


def sample_figure(rows_path, image_dir, out_png):
    """The first held-out page, its true text and the model's text, one picture."""
    rows = [json.loads(line) for line in Path(rows_path).read_text().splitlines() if line.strip()]
    if not rows:
        return None
    row = rows[0]
    page = Image.open(Path(image_dir) / "images" / "000000.png").convert("RGB")
    font = ImageFont.load_default(size=13)
    wrap = lambda text: [w for line in text.splitlines() for w in textwrap.wrap(line, 70) or [""]]
    pred = wrap(row["pred"])
    pred = pred[:12] + ["[...]"] * (len(pred) > 12)  # a model that never stops would fill the picture
    lines = ["TRUE:"] + wrap(row["ref"]) + ["", "MODEL:"] + pred
    w = max(page.width, 20 + max(int(font.getlength(t)) for t in lines))
    h = page.height + 20 + 17 * len(lines)
    canvas = Image.new("RGB", (w, h), "white")
    canvas.paste(page, (0, 0))
    d = ImageDraw.Draw(canvas)
    for i, t in enumerate(lines):
        d.text((10, page.height + 10 + 17 * i), t, fill=(0, 0, 0) if i < len(lines) - len(pred) - 1
               else (20, 60, 160), font=font)
    canvas.save(out_png)
    return row


def phase_steps(base, stage):
    """The steps a training stage ran (its summary.json), '' for the other stages."""
    path = base / stage / "summary.json"
    return json.loads(path.read_text()).get("steps", "") if path.is_file() else ""


def main(args):
    base = Path(args.base)
    times = [line.split("\t") for line in (base / "timings.tsv").read_text().splitlines() if line.strip()]
    stage_s = {}
    for name, sec in times:
        stage_s[name] = stage_s.get(name, 0) + int(sec)
    summaries = sorted((base / "eval").glob("*.summary.json"))
    md = ["# CPU speedrun report", ""]
    md.append(f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads. Total wall time: "
              f"{args.total_seconds / 60:.1f} min" if args.total_seconds else "")
    md += ["", "| stage | seconds | steps (fitted to the time budget) |", "|---|---|---|"]
    md += [f"| {k} | {v} | {phase_steps(base, k)} |" for k, v in stage_s.items()]

    md += ["", "## Held-out accuracy (fonts and text never seen in training)", ""]
    md += ["| set | n | CER | target | WER | NED | Fox precision | exact | tesseract CER |",
           "|---|---|---|---|---|---|---|---|---|"]
    comp = []
    for path in summaries:
        s = json.loads(path.read_text())
        name = path.name.split(".")[0].removeprefix("heldout_")
        sc = s["by_kind"].get("all")  # one set per summary: its name is the set's
        if sc:
            tess = s.get("tesseract", {}).get("by_kind", {}).get("all")
            tess = f"{100 * tess['cer']:.2f}%" if tess else "not run"
            tgt = TARGETS.get(name)
            verdict = "" if tgt is None else (f"<= {100 * tgt:.0f}%: " + ("met" if sc["cer"] <= tgt else
                                              f"missed by {100 * (sc['cer'] - tgt):.1f} points"))
            md.append(f"| {name} | {sc['n']} | {100 * sc['cer']:.2f}% | {verdict} | {100 * sc['wer']:.1f}% | "
                      f"{sc['ned']:.3f} | {100 * sc['precision']:.1f}% | {100 * sc['exact']:.1f}% | {tess} |")
        comp += [dict(c, set=path.name.split(".")[0]) for c in s["compression"]]
    if comp:
        md += ["", "## Compression: text tokens per vision token", "",
               "| set | text tokens / vision token | n | precision | CER |", "|---|---|---|---|---|"]
        md += [f"| {c['set']} | {c['bucket']} | {c['n']} | {100 * c['precision']:.1f}% | {100 * c['cer']:.2f}% |"
               for c in comp]

    from nanoocr.checkpoint import load_model
    from nanoocr.evaluate import bits_per_byte, image_reliance
    model, tok, _ = load_model(base / "model")
    md += ["", "## Does it look at the page?", "",
           "Decoder loss (nats/token) on held-out samples with their own images and with each image swapped for "
           "another sample's. A model that reads does much worse on the wrong page; equal numbers mean it "
           "writes from its language prior alone. Target: own at most half of swapped.", "",
           "| set | n | own images | swapped images | own / swapped |", "|---|---|---|---|---|"]
    for kind in SETS:
        manifest = base / "data" / f"heldout_{kind}" / "manifest.jsonl"
        if manifest.exists():
            r = image_reliance(model, tok, manifest, n=32)
            md.append(f"| {kind} | {r['n']} | {r['own']:.3f} | {r['swapped']:.3f} | {r['own'] / r['swapped']:.2f} |")

    from nanoocr.synth import corpus
    texts = corpus()["heldout"].paragraphs[: args.bpb_paragraphs]
    phase1, _, _ = load_model(base / "phase1" / "model")
    before, after = bits_per_byte(phase1, tok, texts), bits_per_byte(model, tok, texts)
    md += ["", "## Language retention", "",
           f"Decoder bits per byte on {len(texts)} held-out corpus paragraphs: after Phase 1 {before:.3f}, "
           f"after Phase 2 {after:.3f} (lower is better; Phase 2 mixes text-only chat in to keep this from rising)."]

    md += ["", "## Loss curves", ""]
    md += [f"![{p}]({p}/loss.png)\n" for p in ("phase0", "phase1", "phase2") if (base / p / "loss.png").exists()]
    para = base / "eval" / "manifest.jsonl"
    rows_files = sorted((base / "eval").glob("*paragraph*.jsonl")) or ([para] if para.exists() else [])
    if rows_files:
        row = sample_figure(rows_files[0], base / "data" / "heldout_paragraph", base / "sample.png")
        if row:
            md += ["", "## A held-out page", "", "![page, truth and model output](sample.png)", "",
                   f"CER on this page: {100 * row['cer']:.1f}%"]
    (base / "report.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main(parser.parse_args())
