"""
Phase 1, alignment: train the compressor (net_2, net_3) and the projector (+ newline/separator
vectors) with SAM, CLIP and the decoder frozen (LLaVA-1.5 style). `--train all` is the seed's
tier-1 recipe (everything trains), which a model built from scratch needs.

  python -m scripts.vis_tok_train --model models/imported --out runs/p1          # pretrained parts
  python -m scripts.vis_tok_train --preset cpu --tokenizer tok/ --train all --out runs/p1
  torchrun --nproc_per_node=8 -m scripts.vis_tok_train --model ... --total-batch-size 256 --out ...
"""

import argparse

import torch

from nanoocr import checkpoint as ck
from nanoocr.common import setup_dist
from nanoocr.model import build_model
from nanoocr.presets import apply_overrides, get_preset
from nanoocr.tokenizer import Tokenizer
from nanoocr.train import add_args, run_phase

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", default=None, help="model folder to start from (e.g. from import-weights)")
parser.add_argument("--preset", default="cpu", help="fresh model of this preset when --model is not given")
parser.add_argument("--tokenizer", default=None, help="tokenizer folder for a fresh model")
parser.add_argument("--cfg", nargs="*", default=[], metavar="PART.FIELD=VALUE",
                    help="overrides of the fresh preset, e.g. sam.depth=0 gpt.n_layer=6")
parser.add_argument("--head-init", type=float, default=0.0, metavar="STD",
                    help="a fresh model's decoder head drawn with this std instead of nanochat's zeros: a zero head "
                         "passes the glyph loss no gradient at first (the glyph probe learned 2x faster at 0.02)")
add_args(parser, train="align", lr=1e-3, steps=1000, batch_size=8)


def build(args):
    if args.model:
        model, tok, _ = ck.load_model(args.model, need_tokenizer=True)
        return model, tok
    if not args.tokenizer:
        raise SystemExit("give --model DIR, or --preset with --tokenizer DIR")
    tok = Tokenizer.from_directory(args.tokenizer)
    cfg = apply_overrides(get_preset(args.preset, vocab_size=tok.vocab_size), args.cfg)
    model = build_model(cfg, tok, seed=args.seed)
    if args.head_init:
        torch.nn.init.normal_(model.gpt.lm_head.weight, std=args.head_init)
    return model, tok


if __name__ == "__main__":
    args = parser.parse_args()
    d = setup_dist(args.device)
    model, tok = build(args)
    run_phase(args, model, tok, "phase1", d)
