"""
`nanoocr bench`: how fast the encoder, a training step, the data loader and generation are on this machine.
One JSON record per measurement goes to a JSONL file (default bench/results/<tag-or-host>-<time>.jsonl, whose
README documents every key), and a table is printed at the end.

    nanoocr bench --smoke                                  # seconds: tiny preset, every section once
    nanoocr bench --preset cpu --threads 2 --repeats 3     # the CPU model, all sections
    nanoocr bench --preset deepseek-d20 --only encoder --modes base --batch-sizes 1 --repeats 1
    nanoocr bench --model runs/p2/model --device cuda --only generate,e2e

Every timing: `--warmup` untimed calls, then the median of `--repeats` timed calls (CUDA synchronised around
each). A training step reuses one fixed batch, so its cost and FLOPs are the same in every repeat.

FLOPs of a step (`flops`) are counted by torch's FlopCounterMode (train.step_flops): SAM, compressor, CLIP,
projector and decoder, attention included, and only the backward work really done (no weight gradients for
frozen parts, no backward before the first trainable stage). For comparison, `flops_analytic` is the 6N +
attention estimate as if everything trained:
    3 * (2 * sum(weights * positions they see) + sum over attention layers(4 * dim * queries * keys))
positions: SAM (S/p)^2, net_2 (S/2p)^2, net_3 and projector g^2, CLIP g^2+1, decoder B*T; keys: SAM window^2
(all patches in global blocks), CLIP g^2+1, decoder T (full, as nanochat's 12*L*d*T).
MFU = flops / step time / common.peak_flops(device); that peak is unknown on CPU unless NANOOCR_PEAK_FLOPS is
set, and then `mfu` is null. Peak memory: torch.cuda.max_memory_allocated on CUDA; on CPU the process's peak
RSS (ru_maxrss), a lifetime high-water mark that cannot be reset between measurements.
"""

import contextlib
import json
import math
import os
import platform
import resource
import socket
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn

from nanoocr.checkpoint import load_model
from nanoocr.common import DTYPES, autocast_ctx, autocast_dtype, peak_flops, pick_device
from nanoocr.data import DataConfig, Mixture, OCRDataset, SynthSource, make_loader
from nanoocr.image import MODES, ViewBatch, choose_tiles, collate_views, grid_side, make_views
from nanoocr.inputs import load_image
from nanoocr.model import build_model
from nanoocr.presets import get_preset
from nanoocr.reader import Reader
from nanoocr.synth import SynthConfig, corpus, generate
from nanoocr.tokenizer import Tokenizer
from nanoocr.train import TrainConfig, apply_freeze, build_optimizer, parse_policy, step_flops, to_device

SECTIONS = ("encoder", "train", "data", "generate", "e2e")
# the defaults; --smoke swaps in the second value of each pair
DEFAULTS = {"preset": ("cpu", "tiny"), "repeats": (5, 1), "warmup": (1, 1), "new_tokens": (256, 12), "threads": (0, 1),
            "modes": ("tiny,small,base,large,gundam", "tiny,base,gundam"), "mode": ("base", "base")}
COLUMNS = {
    "encoder": ["mode", "pass", "policy", "batch", "views", "ms", "ms_per_view", "views_s"],
    "train": ["phase", "batch", "seq_len", "ms", "samples_s", "tokens_s", "flops", "flops_analytic", "mfu",
              "peak_mem_mb"],
    "data": ["batch", "workers", "samples_s", "ratio_phase1", "ratio_phase2"],
    "generate": ["batch", "prompt_len", "new_tokens", "prefill_ms", "decode_tok_s", "cached_ms", "uncached_ms",
                 "kv_speedup"],
    "e2e": ["batch", "new_tokens", "s", "pages_s", "tokens_s"],
}


def add_args(p):
    p.add_argument("--preset", default=None, help="deepseek-d20 | cpu | tiny (default cpu; tiny with --smoke)")
    p.add_argument("--model", default=None, help="model folder (model + tokenizer) instead of a random preset")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of sections: {','.join(SECTIONS)}")
    p.add_argument("--modes", default=None, help="encoder modes (default all five)")
    p.add_argument("--mode", default=None, help="view mode for train/data/generate/e2e (default base)")
    p.add_argument("--passes", default="forward,align,all",
                   help="encoder passes: forward (no_grad) and/or fwd+bwd under the align / all freeze policies")
    p.add_argument("--batch-sizes", default=None, help="default 1,8,32 on cuda, 1,8 on cpu, 1,2 with --smoke")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="autocast dtype (default bf16 on cuda)")
    p.add_argument("--compile", action="store_true", help="torch.compile the encoder and the training forward")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (0 = torch's default; 1 with "
                   "--smoke). On a shared CPU give only the free cores: threads waiting on busy ones cost 100x")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers (as in training)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement; the median counts")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first")
    p.add_argument("--new-tokens", type=int, default=None, help="tokens generated per row (default 256)")
    p.add_argument("--out", default=None, help="JSONL file, or a folder for <tag-or-host>-<time>.jsonl")
    p.add_argument("--tag", default=None, help="a name for this run (default: the host name)")
    p.add_argument("--smoke", action="store_true", help="seconds-long run of every section (the test)")


def resolve(args):
    for k, (normal, smoke) in DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, smoke if args.smoke else normal)
    if args.device == "auto":
        args.device = pick_device()
    args.dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    if args.batch_sizes is None:
        args.batch_sizes = "1,2" if args.smoke else ("1,8,32" if args.device.startswith("cuda") else "1,8")
    args.batch_sizes = [int(b) for b in str(args.batch_sizes).split(",")]
    for name, allowed in (("modes", MODES), ("passes", ("forward", "align", "all")), ("only", SECTIONS)):
        value = [s.strip() for s in getattr(args, name).split(",") if s.strip()]
        bad = set(value) - set(allowed)
        if bad:
            raise SystemExit(f"--{name}: unknown {sorted(bad)}; choose from {','.join(allowed)}")
        setattr(args, name, value)
    if args.mode not in MODES:
        raise SystemExit(f"--mode {args.mode!r}: choose one of {','.join(MODES)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")
    return args


# ----------------------------------------------------------------------------- timing + records

def timeit(fn, args, dev):
    """Median seconds of fn() over args.repeats calls, after args.warmup untimed ones."""
    sync = torch.cuda.synchronize if dev.type == "cuda" else lambda: None
    for _ in range(args.warmup):
        fn()
    times = []
    for _ in range(max(1, args.repeats)):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class Recorder:
    def __init__(self, path):
        self.path, self.records = Path(path), []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.path, "w")

    def attempt(self, base, fn):
        """Run one measurement fn() -> dict; an out-of-memory becomes a record with an error, not the end."""
        label = " ".join(f"{k}={v}" for k, v in base.items() if k != "kind" and v is not None)
        print(f"[{base['kind']}] {label} ...", end=" ", flush=True)
        try:
            rec = {**base, **fn()}
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            rec = {**base, "error": "out of memory"}
        self.write(rec)
        shown = ", ".join(f"{k} {fmt(rec.get(k))}" for k in COLUMNS.get(rec["kind"], []) if k not in base)
        print(rec.get("error") or shown, flush=True)
        return rec

    def write(self, rec):
        self.records.append(rec)
        print(json.dumps(rec), file=self.f, flush=True)


def fmt(v):
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
        return "-" if v is None else str(v)
    return f"{v:.3g}" if abs(v) >= 1e7 else f"{v:.0f}" if abs(v) >= 1e3 or isinstance(v, int) else f"{v:.4g}"


def print_table(records):
    for kind, cols in COLUMNS.items():
        rows = [[fmt(r.get(c)) for c in cols] for r in records if r["kind"] == kind]
        if rows:
            w = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
            print(f"\n{kind}")
            for r in [cols] + rows:
                print("  ".join(v.rjust(w[i]) for i, v in enumerate(r)))


def device_name(dev):
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def peak_memory(dev):
    """(MB, what it is)."""
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_peak_rss"  # KB on Linux


# ----------------------------------------------------------------------------- model, tokenizer, data

def build(args, dev):
    """-> (model on dev, tokenizer). A fresh preset gets a quickly trained small tokenizer; the decoder keeps
    the preset's vocab size so the head costs what it would (unused rows are harmless)."""
    if args.model:
        model, tok, _ = load_model(args.model, need_tokenizer=True)
        return model.to(dev), tok
    cfg = get_preset(args.preset)
    tok = Tokenizer.train(corpus()["train"].paragraphs[:2000], min(cfg.gpt.vocab_size, 1024))
    cfg.gpt.vocab_size = max(cfg.gpt.vocab_size, tok.vocab_size)
    return build_model(cfg, tok, seed=0, device=dev), tok


def dataset(model, tok, args):
    dcfg = DataConfig(mode=args.mode, seq_len=model.config.gpt.sequence_len)
    return OCRDataset(Mixture([SynthSource()]), tok, model.config, dcfg)


def first_batch(ds, b):
    for batch, _ in zip(make_loader(ds, b, workers=0), range(100)):
        if batch["inputs"] is not None and batch["samples"] == b:  # a full batch, no skipped samples
            return batch
    raise RuntimeError(f"no full batch of {b} in 100 tries: the data keeps skipping samples (mode too big?)")


def random_views(cfg, mode, b):
    """A ViewBatch of b images with random pixels in the shapes `mode` gives a portrait (A4-like) page."""
    S, c = cfg.sizes["base" if mode == "gundam" else mode], cfg.sizes["small"]
    tiles = choose_tiles(S, int(S * 1.414), c, cfg.min_crops, cfg.max_crops) if mode == "gundam" else (1, 1)
    n = tiles[0] * tiles[1] if tiles != (1, 1) else 0
    return ViewBatch(torch.rand(b, 3, S, S) * 2 - 1, torch.rand(b * n, 3, c, c) * 2 - 1, [tiles] * b)


def weights(module):
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


def analytic_flops(model, batch):
    """The 6N + attention estimate of one training step, as if every part trained (module docstring)."""
    c, sam, clip = model.config, model.sam_model, model.vision_model
    clip_w = weights(clip) - clip.embeddings.patch_embedding.weight.numel()  # the pixel conv is never used
    fwd = 0
    for x in (batch["views"].global_views, batch["views"].crops):
        side = x.shape[-1] // c.sam.patch_size
        P, s2, g = side * side, math.ceil(side / 2), grid_side(x.shape[-1], c.sam.patch_size)  # after net_2, net_3
        f = 2 * P * (weights(sam.patch_embed) + weights(sam.blocks) + weights(sam.neck))
        f += sum(4 * c.sam.dim * P * (blk.window_size ** 2 or P) for blk in sam.blocks)
        f += 2 * (s2 * s2 * weights(sam.net_2) + g * g * weights(sam.net_3) + g * g * weights(model.projector))
        f += 2 * (g * g + 1) * clip_w + c.clip.depth * 4 * c.clip.dim * (g * g + 1) ** 2
        fwd += x.shape[0] * f
    B, T = batch["inputs"].shape
    fwd += 2 * B * T * weights(model.gpt)  # wte and value embeddings are lookups
    fwd += sum(4 * c.gpt.n_embd * B * T * min(T, w or T) for w in model.gpt.windows)  # 2026: windows cap keys
    return 3 * fwd


# ----------------------------------------------------------------------------- sections
# Each bench_* section reads what it needs from one Bench; each *_once function is one measurement -> dict,
# handed to Recorder.attempt via partial.


@dataclass
class Bench:
    model: nn.Module
    tok: Tokenizer
    args: object  # the resolved settings
    dev: torch.device
    rec: "Recorder"
    train_rates: dict = field(default_factory=dict)  # (phase, batch) -> samples/s: measured by train, read by data


def encoder_once(model, views, pas, args, dev):
    n_views = len(views) + views.crops.shape[0]

    def run():
        with torch.set_grad_enabled(pas != "forward"), autocast_ctx(dev, args.dtype):
            out = model.encode_images(views)
        if pas != "forward":
            torch.cat(out).float().square().mean().backward()
            model.zero_grad(set_to_none=True)
    t = timeit(run, args, dev)
    return {"views": n_views, "ms": 1e3 * t, "ms_per_view": 1e3 * t / n_views, "views_s": n_views / t}


def bench_encoder(b):
    model, args, dev = b.model, b.args, b.dev
    if args.compile:  # an instance attribute shadows the method: encode_images calls the compiled one
        model.encode_views = torch.compile(model.encode_views)
    for mode in args.modes:
        for n in args.batch_sizes:
            views = random_views(model.config, mode, n).to(dev)
            for pas in args.passes:
                if pas != "forward":  # align: backward through compressor+projector (and CLIP's inputs) only
                    apply_freeze(model, parse_policy(pas))
                base = {"kind": "encoder", "mode": mode, "pass": "forward" if pas == "forward" else "fwd+bwd",
                        "policy": None if pas == "forward" else pas, "batch": n, "size": views.global_views.shape[-1]}
                b.rec.attempt(base, partial(encoder_once, model, views, pas, args, dev))
    if args.compile:
        del model.encode_views


def train_once(model, fwd, opt, batch, args, dev):
    params = [p for p in model.parameters() if p.requires_grad]
    n_tok = int((batch["targets"] >= 0).sum())

    def step():
        with autocast_ctx(dev, args.dtype):
            loss = fwd(batch["inputs"], batch["targets"], views=batch["views"], loss_reduction="sum")
        (loss / n_tok).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t = timeit(step, args, dev)
    mem, mem_kind = peak_memory(dev)
    flops, peak = step_flops(model, batch, dev), peak_flops(dev)
    B, T = batch["inputs"].shape
    return {"seq_len": T, "views": len(batch["views"]) + batch["views"].crops.shape[0], "ms": 1e3 * t,
            "samples_s": B / t, "tokens_s": B * T / t, "target_tokens_s": n_tok / t, "flops": flops,
            "flops_analytic": analytic_flops(model, batch), "flops_s": flops / t, "peak_flops": peak,
            "mfu": flops / t / peak if peak else None, "peak_mem_mb": mem, "peak_mem_kind": mem_kind}


def bench_train(b):
    model, args, dev = b.model, b.args, b.dev
    ds = dataset(model, b.tok, args)
    fwd = torch.compile(model) if args.compile else model
    model.train()
    for phase, policy in (("phase1", "align"), ("phase2", "finetune")):
        apply_freeze(model, parse_policy(policy))
        opt = build_optimizer(model, TrainConfig(lr=1e-6), dev)  # a tiny lr: the weights hardly move
        for n in args.batch_sizes:
            batch = to_device(first_batch(ds, n), dev)  # one fixed batch: same cost every repeat
            base = {"kind": "train", "phase": phase, "policy": policy, "mode": args.mode, "batch": n}
            r = b.rec.attempt(base, partial(train_once, model, fwd, opt, batch, args, dev))
            b.train_rates[(phase, n)] = r.get("samples_s")
        opt = None  # frees the optimiser state before the next phase builds its own
    model.zero_grad(set_to_none=True)
    model.eval()


def loader_once(ds, b, args, dev, rates):
    it = iter(make_loader(ds, b, workers=args.workers, pin=dev.type == "cuda"))
    for _ in range(max(1, args.warmup)):  # the first batch also pays for starting the workers
        next(it)
    n, t0 = 0, time.perf_counter()
    for _ in range(max(3, args.repeats)):  # workers run ahead: time a stretch, not single batches
        n += next(it).get("samples", 0)
    sps = n / (time.perf_counter() - t0)
    out = {"samples_s": sps, "target_ratio": 3.0}
    for phase in ("phase1", "phase2"):
        step = rates.get((phase, b))
        out[f"step_samples_s_{phase}"] = step
        out[f"ratio_{phase}"] = sps / step if step else None
    return out


def bench_data(b):
    args = b.args
    ds = dataset(b.model, b.tok, args)
    for n in args.batch_sizes:
        base = {"kind": "data", "mode": args.mode, "batch": n, "workers": args.workers}
        b.rec.attempt(base, partial(loader_once, ds, n, args, b.dev, b.train_rates))


def pages(n):
    """n synthetic page-like images (layout, columns, table)."""
    cfg = SynthConfig(kinds={"layout": 1.0, "columns": 1.0, "table": 1.0})
    return [generate(i, cfg).image for i in range(n)]


def bench_reader(b):
    """A Reader that generates exactly new_tokens per page: random weights would stop anywhere."""
    reader = Reader(b.model, b.tok, device=str(b.dev), mode=b.args.mode, max_new_tokens=b.args.new_tokens)
    reader.engine.autocast_dtype = autocast_dtype(b.dev, b.args.dtype)
    reader.stop = []
    return reader


def generate_once(engine, prompts, views, args, dev):
    B, N = len(prompts), args.new_tokens
    # stop_ids=(): every row produces exactly n tokens
    gen = lambda n, cache=True: engine.generate(prompts, views, n, stop_ids=(), use_cache=cache)
    t1 = timeit(lambda: gen(1), args, dev)  # encode the images + prefill + the first token
    tn = timeit(lambda: gen(N), args, dev)
    tu = timeit(lambda: gen(N, cache=False), args, dev)
    decode = tn - t1  # N - 1 decode steps
    ok = decode > 0 and N > 1
    return {"new_tokens": N, "prefill_ms": 1e3 * t1, "decode_ms": 1e3 * decode,
            "decode_tok_s": B * (N - 1) / decode if ok else None, "per_row_tok_s": (N - 1) / decode if ok else None,
            "cached_ms": 1e3 * tn, "uncached_ms": 1e3 * tu, "kv_speedup": tu / tn}


def bench_generate(b):
    args = b.args
    reader = bench_reader(b)
    page = pages(1)[0]
    prompt = reader.prompt_ids(page)
    for n in args.batch_sizes:
        views = collate_views([make_views(page, args.mode, b.model.config)] * n)
        base = {"kind": "generate", "mode": args.mode, "batch": n, "prompt_len": len(prompt)}
        b.rec.attempt(base, partial(generate_once, reader.engine, [prompt] * n, views, args, b.dev))


def e2e_once(reader, paths, args, dev):
    def read():
        return reader.read([load_image(p, name=str(p)) for p in paths])  # decoded as ocr and serve decode
    t, b = timeit(read, args, dev), len(paths)
    return {"new_tokens": args.new_tokens, "s": t, "pages_s": b / t, "tokens_s": b * args.new_tokens / t}


def bench_e2e(b):
    args = b.args
    sizes = (1, 2) if args.smoke else (1, 8)
    reader = bench_reader(b)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, im in enumerate(pages(max(sizes))):
            paths.append(Path(tmp) / f"page{i}.png")
            im.save(paths[-1])
        for n in sizes:
            base = {"kind": "e2e", "mode": args.mode, "batch": n}
            b.rec.attempt(base, partial(e2e_once, reader, paths[:n], args, b.dev))


# ----------------------------------------------------------------------------- main

def main(args):
    args = resolve(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    tag = args.tag or socket.gethostname()
    out = Path(args.out or "bench/results")
    if out.suffix != ".jsonl":
        out = out / f"{tag}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    print(f"building the model ({args.model or args.preset}) on {dev} ...", flush=True)
    t0 = time.perf_counter()
    model, tok = build(args, dev)
    model.eval()
    counts = model.param_counts()
    rec = Recorder(out)
    rec.write({"kind": "env", "tag": tag, "host": socket.gethostname(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "python": platform.python_version(), "torch": torch.__version__, "device": dev.type,
               "device_name": device_name(dev), "threads": torch.get_num_threads(), "dtype": args.dtype,
               "compile": args.compile, "preset": args.preset if not args.model else None, "model": args.model,
               "params": counts, "total_params": sum(counts.values()), "vocab_size": model.config.gpt.vocab_size,
               "build_s": time.perf_counter() - t0, "nanoocr_peak_flops": os.environ.get("NANOOCR_PEAK_FLOPS"),
               "settings": vars(args)})
    print(f"{sum(counts.values()) / 1e6:.1f}M parameters, {device_name(dev)}, {torch.get_num_threads()} threads, "
          f"{args.dtype}{', compiled' if args.compile else ''}; records -> {out}", flush=True)
    sections = {"encoder": bench_encoder, "train": bench_train, "data": bench_data, "generate": bench_generate,
                "e2e": bench_e2e}
    bench = Bench(model, tok, args, dev, rec)
    for name in (s for s in SECTIONS if s in args.only):
        sections[name](bench)
    rec.f.close()
    print_table(rec.records)
    print(f"\nwrote {len(rec.records)} records to {out}")
    return 0
