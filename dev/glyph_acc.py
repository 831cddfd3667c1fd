"""
How well does an encoder name the glyphs of fonts it never saw? Per-slot accuracy of the glyph read-out
(model.glyph_loss's: the vision token, channels rolled per slot, through the decoder's norm + head) on held-out
synthetic samples, over the labels that are characters (not the spaces that say a cell has no more).

    python -m dev.glyph_acc --model runs/p0/model --n 64 --set text=random
"""

import argparse
import json

import torch

from nanoocr.checkpoint import load_model
from nanoocr.data import DataConfig, Mixture, OCRDataset, SynthSource, make_loader
from nanoocr.synth import SynthConfig, parse_kinds


@torch.no_grad()
def glyph_accuracy(model, tok, synth, n, batch_size=16, split="heldout"):
    """-> {slot k: accuracy over character labels}, plus 'all' and the label counts."""
    ds = OCRDataset(Mixture([SynthSource(synth, split=split)]), tok, model.config,
                    DataConfig("base", model.config.gpt.sequence_len, glyphs=True))
    space = tok.encode(" ")[0]
    loader = iter(make_loader(ds, batch_size, workers=0))
    hits, total = {}, {}
    for _ in range(max(1, n // batch_size)):
        b = next(loader)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x = torch.cat(model.encode_images(b["views"])).float()  # (n_tokens, n_embd)
        lab = b["glyphs"]
        for k in range(lab.shape[1]):
            pred = model.gpt.logits(model.glyph_features(x, k, lab.shape[1])).argmax(-1)
            sel = (lab[:, k] >= 0) & (lab[:, k] != space)
            hits[k] = hits.get(k, 0) + int((pred[sel] == lab[sel, k]).sum())
            total[k] = total.get(k, 0) + int(sel.sum())
    out = {f"slot{k}": round(hits[k] / max(1, total[k]), 4) for k in hits}
    out["all"] = round(sum(hits.values()) / max(1, sum(total.values())), 4)
    out["labels"] = sum(total.values())
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--n", type=int, default=64, help="samples")
    p.add_argument("--split", default="heldout", choices=["train", "heldout"],
                   help="fonts and text never trained on (heldout), or the training split's (to see the gap)")
    p.add_argument("--kinds", default="line:1,paragraph:2")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="SynthConfig overrides")
    args = p.parse_args()
    model, tok, _ = load_model(args.model, need_tokenizer=True)
    model.eval()
    synth = SynthConfig(kinds=parse_kinds(args.kinds)).with_overrides(args.set)
    print(json.dumps({"model": args.model, "set": args.set, "split": args.split,
                      **glyph_accuracy(model, tok, synth, args.n, split=args.split)}))


if __name__ == "__main__":
    main()
