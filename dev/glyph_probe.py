"""
Can an encoder trained from scratch learn to see characters? The dense reading task alone: every vision
token must name the character whose centre lies in its cell (model.glyph_loss, labels from the synthetic
generator), with no decoder and no language to lean on. Reports the accuracy on character cells (space
cells left out) as training goes, for our DeepEncoder or for a plain CNN yardstick on the same labels.

    python -m dev.glyph_probe --encoder deepencoder --steps 150 --set text=random font_size=36,44 \
        random_chars=0123456789 fonts=DejaVuSans.ttf
    python -m dev.glyph_probe --encoder cnn ...   # the same task for a 7-layer conv net
    python -m dev.glyph_probe --cfg sam.stem=conv sam.compressor_act=1 --read compressor ...

--read picks where the linear read-out sits: after the compressor, after CLIP, after the projector, or
through the decoder's final norm + lm_head (what model.glyph_loss does). --cfg overrides preset fields.
"""

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanoocr.data import DataConfig, Mixture, OCRDataset, SynthSource, make_loader
from nanoocr.gpt import norm
from nanoocr.image import grid_side
from nanoocr.model import NanoDeepseekOCR, part_of
from nanoocr.muon import MuonAdamW
from nanoocr.presets import apply_overrides, get_preset
from nanoocr.synth import SynthConfig, parse_kinds
from nanoocr.tokenizer import Tokenizer
from nanoocr.train import muon_params


def cnn(vocab, depth_to_grid):
    """Conv-BN-ReLU, stride 2 until one cell per vision token, then a 1x1 classifier."""
    layers, c = [], 3
    for i in range(depth_to_grid):
        o = min(256, 32 * 2 ** i)
        layers += [nn.Conv2d(c, o, 3, 2, 1), nn.BatchNorm2d(o), nn.ReLU()]
        c = o
    return nn.Sequential(*layers, nn.Conv2d(c, c, 3, 1, 1), nn.ReLU(), nn.Conv2d(c, vocab, 1))


def setup(args):
    """What both dev experiments start from: threads, seed 0, the tokenizer, the preset with --cfg overrides,
    and batches of the synthetic kinds/overrides in args (kinds, set, batch_size) with glyph labels."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tok = Tokenizer.from_directory(args.tokenizer)
    cfg = apply_overrides(get_preset(args.preset, vocab_size=tok.vocab_size), args.cfg)
    synth = SynthConfig(kinds=parse_kinds(args.kinds)).with_overrides(args.set)
    ds = OCRDataset(Mixture([SynthSource(synth)]), tok, cfg, DataConfig("base", cfg.gpt.sequence_len, glyphs=True))
    return tok, cfg, iter(make_loader(ds, args.batch_size, workers=1))


def single_glyph(glyphs, space):
    """(n_tokens, slots) labels -> (n_tokens,): the character of a cell that holds exactly one, the space for an
    empty cell, -1 elsewhere (the probe's task, as the labels were before cells got a slot per character)."""
    return torch.where((glyphs[:, 1] == space) | (glyphs[:, 0] == space), glyphs[:, 0], -1)


def grid_labels(glyphs, n, g, space):
    # per-image (g*(g+1)+1) labels incl. layout tokens -> (n*g*g,) for the grid cells, spaces ignored
    lab = single_glyph(glyphs, space).view(n, -1)[:, :-1].reshape(n, g, g + 1)[:, :, :g].reshape(-1)
    return torch.where(lab == space, -1, lab)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", choices=["deepencoder", "cnn"], default="deepencoder")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--tokenizer", required=True, help="tokenizer folder (the labels are its token ids)")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--kinds", default="line:1,paragraph:2")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="SynthConfig overrides")
    p.add_argument("--every", type=int, default=25, help="report the mean accuracy over this many steps")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--cfg", nargs="*", default=[], metavar="PART.FIELD=VALUE", help="preset overrides")
    p.add_argument("--read", choices=["compressor", "clip", "projector", "norm_linear", "lm_head"], default="lm_head")
    p.add_argument("--freeze", default="", help="comma list of parts kept at init (sam, compressor, clip)")
    p.add_argument("--proj-init", type=float, default=0.0, help="std of the projector's init (ours: 0.02)")
    p.add_argument("--head-init", type=float, default=0.0, help="std of lm_head's init (nanochat: 0)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CPU too)")
    p.add_argument("--muon", type=float, default=0.0,
                   help="Muon's lr for the encoder's and projector's matrices and conv filters (AdamW for the rest)")
    p.add_argument("--aux-compressor", type=float, default=0.0,
                   help="weight of a second, training-only linear read-out on the compressor (deepencoder)")
    p.add_argument("--out", default=None, help="JSONL of the reports")
    args = p.parse_args()
    tok, cfg, loader = setup(args)
    g = grid_side(cfg.sizes["base"], cfg.sam.patch_size)
    space = tok.encode(" ")[0]

    if args.encoder == "cnn":
        net = cnn(tok.vocab_size, (cfg.sizes["base"] // g).bit_length() - 1)
        params = list(net.parameters())

        def logits_of(batch):  # (n*g*g, V), no second read-out
            return net(batch["views"].global_views).permute(0, 2, 3, 1).reshape(-1, tok.vocab_size), None
    else:
        model = NanoDeepseekOCR(cfg).init_weights()
        if args.proj_init:
            nn.init.normal_(model.projector.layers.weight, std=args.proj_init)
        if args.head_init:
            nn.init.normal_(model.gpt.lm_head.weight, std=args.head_init)
        frozen = {f for f in args.freeze.split(",") if f}
        head = nn.Linear(cfg.gpt.n_embd if args.read in ("projector", "norm_linear") else cfg.clip.dim, tok.vocab_size)
        for name, prm in model.named_parameters():  # the encoder, projector and the head that reads tokens
            prm.requires_grad_((not name.startswith("gpt.") or name == "gpt.lm_head.weight")
                               and part_of(name) not in frozen)
        model.vision_model.embeddings.patch_embedding.requires_grad_(False)
        params = [prm for prm in model.parameters() if prm.requires_grad]
        params += list(head.parameters()) if args.read != "lm_head" else []
        aux_head = nn.Linear(cfg.sam.out_dim, tok.vocab_size) if args.aux_compressor else None
        params += list(aux_head.parameters()) if aux_head else []

        def logits_of(batch):  # -> (n*g*g, V) logits of the read-out, and of the compressor's aux head (or None)
            sam = model.sam_model(batch["views"].global_views)  # (n, C, g, g)
            cells = sam.permute(0, 2, 3, 1).reshape(-1, sam.shape[1])
            return read_out(sam, cells), aux_head(cells) if aux_head else None

        def read_out(sam, cells):
            if args.read == "compressor":
                return head(cells)
            clip = model.vision_model(patch_embeds=sam)[:, 1:]  # (n, g*g, C)
            if args.read == "clip":
                return head(clip.reshape(-1, clip.shape[-1]))
            proj = model.projector(torch.cat([clip, sam.flatten(2).transpose(1, 2)], -1)).flatten(0, 1)
            if args.read == "norm_linear":
                return head(norm(proj))
            return head(proj) if args.read == "projector" else model.gpt.logits(norm(proj))

    groups = [{"params": params}]
    if args.muon and args.encoder != "cnn":  # the matrices train.build_optimizer gives Muon, of those that train here
        ids = muon_params(model)
        groups = [{"params": [prm for prm in params if id(prm) not in ids]},
                  {"params": [prm for prm in params if id(prm) in ids], "muon": True, "lr": args.muon}]
    opt = MuonAdamW(groups, lr=args.lr, betas=(0.9, 0.95))
    out = open(args.out, "w") if args.out else None
    hits = total = 0
    t0 = time.time()
    for step in range(1, args.steps + 1):
        batch = next(loader)
        labels = grid_labels(batch["glyphs"], batch["views"].global_views.shape[0], g, space)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            logits, aux = logits_of(batch)
        logits = logits.float()
        loss = F.cross_entropy(logits, labels, ignore_index=-1)
        if aux is not None:
            loss = loss + args.aux_compressor * F.cross_entropy(aux.float(), labels, ignore_index=-1)
        for group in opt.param_groups:
            group.setdefault("base_lr", group["lr"])
            group["lr"] = group["base_lr"] * min(1.0, step / max(1, args.warmup))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sel = labels >= 0
        hits += int((logits.detach().argmax(-1)[sel] == labels[sel]).sum())
        total += int(sel.sum())
        if step % args.every == 0 or step == args.steps:
            rec = {"encoder": args.encoder, "cfg": args.cfg, "read": args.read, "freeze": args.freeze,
                   "step": step, "loss": round(loss.item(), 4),
                   "char_acc": round(hits / max(1, total), 4), "seconds": round(time.time() - t0, 1)}
            print(json.dumps(rec), flush=True)
            if out:
                out.write(json.dumps(rec) + "\n")
            hits = total = 0
    if out:
        out.close()
        print(f"wrote {Path(args.out)}")


if __name__ == "__main__":
    main()
