"""
Can the decoder read when the encoder is perfect? The stand-in: every vision token is replaced by the token
embedding of the character drawn in its cell (the generator knows where it drew each one; a learned "blank"
vector where there is none or several), written into the same 2D layout at the same <|image|> positions. Only
the decoder trains. If this learns to copy fast, a real model's failure to read is the encoder's; if not, it is
the decoder's (alignment of output characters to cells).

    python -m dev.standin --tokenizer tok/ --steps 400 --set text=random line_chars=3,14
"""

import argparse
import json
import time

import torch
import torch.nn as nn

from dev.glyph_probe import setup, single_glyph
from nanoocr.model import NanoDeepseekOCR


def pack_1d(lab, n, space):
    # per image: its characters (not space, not -1) first in reading order, then -1
    out = torch.full_like(lab, -1).view(n, -1)
    for i, row in enumerate(lab.view(n, -1)):
        chars = row[(row >= 0) & (row != space)]
        out[i, :len(chars)] = chars
    return out.view(-1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--cfg", nargs="*", default=[], metavar="PART.FIELD=VALUE")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--kinds", default="line:1")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE")
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--layout", choices=["2d", "1d"], default="2d",
                   help="1d: the cells' characters packed in reading order at the start of each image's tokens")
    p.add_argument("--blank", choices=["learned", "zero"], default="learned")
    args = p.parse_args()
    tok, cfg, loader = setup(args)
    model = NanoDeepseekOCR(cfg).init_weights()
    model.image_token_id = tok.image_id
    blank = nn.Parameter(torch.randn(cfg.gpt.n_embd))
    params = list(model.gpt.parameters()) + [blank]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95))
    t0, losses = time.time(), []
    for step in range(1, args.steps + 1):
        b = next(loader)
        lab = single_glyph(b["glyphs"], tok.encode(" ")[0])  # (n_vision_tokens,), -1 = no single character
        if args.layout == "1d":
            lab = pack_1d(lab, b["inputs"].shape[0], tok.encode(" ")[0])
        emb = model.gpt.transformer.wte(lab.clamp(min=0))
        fill = blank.expand_as(emb) if args.blank == "learned" else torch.zeros_like(emb)
        vision = torch.where((lab >= 0)[:, None], emb, fill)
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, step / 20)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model.gpt(embeds=model.embed(b["inputs"], vision), targets=b["targets"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % args.every == 0:
            print(json.dumps({"step": step, "loss": round(sum(losses) / len(losses), 3),
                              "seconds": round(time.time() - t0, 1)}), flush=True)
            losses = []


if __name__ == "__main__":
    main()
