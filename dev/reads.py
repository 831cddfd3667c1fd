"""
Does a checkpoint read? The two numbers to watch while a recipe is being found: the decoder loss with each
sample's own image vs a swapped one (a reader's loss rises sharply on the wrong page) and greedy CER on a
few held-out samples.

    python -m dev.reads --model runs/p1/model --data heldout_line/manifest.jsonl heldout_paragraph/manifest.jsonl
"""

import argparse
import json

import torch

from nanoocr.evaluate import eval_set, evaluate, image_reliance
from nanoocr.reader import Reader


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", nargs="+", required=True, help="manifests")
    p.add_argument("--n", type=int, default=24, help="samples per set for CER")
    p.add_argument("--show", type=int, default=2, help="print this many (truth, output) pairs per set")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    reader = Reader.from_dir(args.model, max_new_tokens=320)
    for manifest in args.data:
        rel = image_reliance(reader.model, reader.tok, manifest, n=16)
        rows, summary = evaluate(reader, eval_set(manifest), limit=args.n, progress=False)
        cer = summary["by_kind"]["all"]["cer"]
        print(json.dumps({"model": args.model, "set": manifest, "own": round(rel["own"], 3),
                          "swapped": round(rel["swapped"], 3), "cer": round(cer, 4), "n": summary["n"]}))
        for r in rows[:args.show]:
            print(f"  truth: {r['ref'][:100]!r}\n  read:  {r['pred'][:100]!r}")


if __name__ == "__main__":
    main()
