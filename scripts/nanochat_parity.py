"""
Our decoder against nanochat's own code: a small random GPT is built, initialised and saved by a nanochat
checkout (92d63d4 for the 2026 format; a 2025 commit whose CPU path runs without `kernels` works too),
imported with `nanoocr import-weights`' loader, and both models' logits are compared: the full forward past
every window, and KV-cache decoding (nanochat's KVCache and ours) across the window edges. CPU, fp32
compute (nanochat's dtype without CUDA); in the 2026 format wte and the value embeddings are stored in
bf16, as a GPU run saves them. (2025 commits keep bf16 rotary tables, ours are fp32: ~5e-3 apart.)

    git -C NANOCHAT_GIT archive 92d63d4 nanochat | tar x -C /tmp/nc   # or any nanochat checkout
    python -m scripts.nanochat_parity --nanochat-src /tmp/nc
"""

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import torch

from nanoocr import weights as W
from nanoocr.gpt import GPT, KVCache


def nanochat_model(nc_gpt, seq_len, vocab, layers, seed):
    """nanochat's GPT with its own init, then every tensor perturbed: its init zeroes the projections
    and smear, which would hide mechanisms from the comparison."""
    fields = {f.name for f in dataclasses.fields(nc_gpt.GPTConfig)}
    kw = dict(sequence_len=seq_len, vocab_size=vocab, n_layer=layers, n_head=4, n_kv_head=2, n_embd=64)
    if "window_pattern" in fields:
        kw["window_pattern"] = "SSSL"
    model = nc_gpt.GPT(nc_gpt.GPTConfig(**kw))
    model.init_weights()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.1 if p.ndim < 2 else 0.5 * p.shape[-1] ** -0.5
            if name.endswith(("wte.weight", "lm_head.weight")) or "value_embeds" in name:
                scale = 0.5
            p.add_(scale * torch.randn(p.shape, generator=g))
        for name, module in model.named_modules():  # as a 2026 GPU run stores them (its fp32 path copes)
            if "window_pattern" in fields and (name == "transformer.wte" or name.startswith("value_embeds.")):
                module.to(torch.bfloat16)
    return model.eval(), kw


def nanochat_decode(nc_engine, model, kw, idx, prefill):
    """nanochat's own KV-cache path: prefill, then one token at a time; None where its API differs."""
    try:
        cache = nc_engine.KVCache(batch_size=idx.shape[0], num_heads=kw["n_kv_head"], seq_len=idx.shape[1],
                                  head_dim=kw["n_embd"] // kw["n_head"], num_layers=kw["n_layer"],
                                  device="cpu", dtype=torch.float32)
    except TypeError:
        return None
    outs = [model(idx[:, :prefill], kv_cache=cache)]
    outs += [model(idx[:, t:t + 1], kv_cache=cache) for t in range(prefill, idx.shape[1])]
    return torch.cat(outs, 1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nanochat-src", required=True, help="a nanochat checkout (the folder holding nanochat/)")
    p.add_argument("--seq-len", type=int, default=256, help="nanochat sequence_len (windows 128 and 256)")
    p.add_argument("--vocab", type=int, default=200, help="nanochat vocab (padded to 256 rows since 2025-12)")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--tokens", type=int, default=300, help="sequence length compared (past every window)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(args.nanochat_src).resolve()))
    torch.set_num_threads(1)
    import nanochat.checkpoint_manager as nc_ckpt
    import nanochat.engine as nc_engine
    import nanochat.gpt as nc_gpt

    torch.manual_seed(args.seed)
    model, kw = nanochat_model(nc_gpt, args.seq_len, args.vocab, args.layers, args.seed)
    idx = torch.randint(0, args.vocab, (2, args.tokens), generator=torch.Generator().manual_seed(args.seed + 1))
    with torch.no_grad():
        want = model(idx).double()
        want_dec = nanochat_decode(nc_engine, model, kw, idx, prefill=args.tokens // 3)
    with tempfile.TemporaryDirectory() as d:
        meta = {"step": 1, "model_config": dataclasses.asdict(model.config)}
        nc_ckpt.save_checkpoint(d, 1, model.state_dict(), None, meta)  # nanochat writes the folder
        cfg = W.nanochat_config(d)
        cfg.vocab_size += W.RESERVED_SPECIAL_TOKENS
        ours = GPT(cfg)
        ours.init_weights()
        report = W.load_nanochat(ours, d)
    print(report)
    ours.eval()
    V = args.vocab
    with torch.no_grad():
        got = ours(idx)
        c = ours.config
        cache = KVCache(2, c.n_layer, c.n_kv_head, c.n_embd // c.n_head, args.tokens, "cpu", torch.float32)
        t0 = args.tokens // 3
        dec = [ours(idx[:, :t0], kv_cache=cache)] + [ours(idx[:, t:t + 1], kv_cache=cache)
                                                     for t in range(t0, args.tokens)]
        dec = torch.cat(dec, 1)
    print(f"nanochat {c.version} format, windows {ours.windows}, {args.tokens} tokens, logits {tuple(got.shape)}")
    print(f"max |logit diff| full forward, ours vs nanochat:   {(got[..., :V].double() - want).abs().max():.3e}")
    if want_dec is not None:
        d = (dec[..., :V].double() - want_dec.double()).abs().max()
        print(f"max |logit diff| KV-cache decode, ours vs nanochat: {d:.3e}")
    print(f"max |logit diff| our KV-cache decode vs our forward: {(dec - got).abs().max():.3e}")
    print(f"max |logit| {want.abs().max():.2f}")


if __name__ == "__main__":
    main()
