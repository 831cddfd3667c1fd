"""
What both training phases share, in the order a run uses it: the settings (argparse flags and the
TrainConfig they fill), the freeze policy, the optimiser and its schedule, the batches, one gradient-
accumulated step, evaluation (validation loss + the collapse monitor), logs and checkpoints, and the
loop `fit` that reads eval -> save -> step -> log. The phase scripts in scripts/ only choose defaults,
build the model and call `run_phase`.
"""

import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from nanoocr import checkpoint as ck
from nanoocr.common import all_gather, all_mean, all_sum, autocast_ctx, peak_flops, print0, teardown_dist
from nanoocr.data import SkipLog, make_loader
from nanoocr.model import PARTS, part_of
from nanoocr.muon import MuonAdamW

# ----------------------------------------------------------------------------- settings


@dataclass
class TrainConfig:
    """The training settings and their defaults: add_args makes a flag of each, train_config fills it from
    the parsed flags, and checkpoints and logs record it."""
    steps: int = 1000
    time_budget: float = 0.0  # seconds: fewer steps than `steps` if that is what fits (0 = run every step)
    batch_size: int = 8  # per rank, per micro-step
    total_batch_size: int = 0  # samples per optimiser step over all ranks; 0 = batch_size * world
    lr: float = 1e-3
    matrix_lr: float = 0.0  # Muon's lr for weight matrices and conv filters (0: AdamW for every parameter)
    vision_lr_mult: float = 1.0  # SAM, compressor and CLIP train at lr * this
    glyph_weight: float = 0.0  # weight of the dense reading loss (model.glyph_loss) where data has glyph centres
    align_weight: float = 0.0  # weight of the attention alignment loss (head 0 of layers 0-1 onto the glyph's cell)
    glyph_only: bool = False  # a warm-up of the encoder on the glyph loss alone: the decoder does not run
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.95)
    schedule: str = "cosine"
    warmup_ratio: float = 0.03
    step_size: int = 2000
    grad_clip: float = 1.0
    eval_every: int = 200
    eval_batches: int = 4
    save_every: int = 500
    collapse_threshold: float = 0.95
    compile: bool = False
    dtype: str = "auto"  # autocast: "auto" (bf16 on CUDA, fp32 on CPU), "bf16" or "fp32"
    grad_checkpoint: bool = False
    workers: int = 1
    seed: int = 0
    stop_after: int = 0  # end the process after this step, as a crash would (tests resume from it)
    run: str = None  # wandb run name: metrics go to wandb too, only when given
    out_dir: str = "out"
    extra: dict = field(default_factory=dict)  # recorded in checkpoints and logs (phase, policy, ...)


def add_args(p, **defaults):
    """Arguments both phase scripts take; `defaults` are each phase's recipe, TrainConfig's the rest."""
    D = {**asdict(TrainConfig()), **defaults}
    g = p.add_argument_group("data")
    g.add_argument("--data", nargs="+", default=["synth"],
                   help="sources: synth | synth:heldout | FILE.jsonl | local HF dataset folder | text:FILE.jsonl")
    g.add_argument("--data-weights", type=float, nargs="+", default=None, help="mixture weights for --data")
    g.add_argument("--text-data", default=None, help="text-only chat JSONL mixed in at --text-ratio")
    g.add_argument("--text-ratio", type=float, default=D.get("text_ratio", 0.0))
    g.add_argument("--val-data", default="synth:heldout", help="validation source ('' for none)")
    g.add_argument("--mode", default=D.get("mode", "base"), help="tiny|small|base|large|gundam")
    g.add_argument("--seq-len", type=int, default=None, help="default: the decoder's sequence_len")
    g.add_argument("--synth-kinds", default=None, help="synthetic kinds, e.g. line:3,paragraph:1")
    g.add_argument("--synth-limit", type=int, default=0, help="use only the first N synthetic samples (overfit)")
    g.add_argument("--synth-set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="SynthConfig overrides for the training data, e.g. line_chars=3,12 augment=0.3")
    g = p.add_argument_group("optimisation")
    g.add_argument("--train", default=D["train"], help=f"policy {sorted(POLICIES)} or comma list of parts")
    g.add_argument("--steps", type=int, default=D["steps"])
    g.add_argument("--time-budget", type=float, default=D["time_budget"], metavar="SECONDS",
                   help="end the phase within this wall-clock time: the step rate measured in the first steps sets "
                        "how many of --steps run, and the lr schedule is laid over those (a speedrun on any machine)")
    g.add_argument("--batch-size", type=int, default=D["batch_size"], help="per rank, per micro-step")
    g.add_argument("--total-batch-size", type=int, default=D["total_batch_size"])
    g.add_argument("--lr", type=float, default=D["lr"], help="AdamW's lr (every parameter Muon does not take)")
    g.add_argument("--matrix-lr", type=float, default=D["matrix_lr"],
                   help="train the weight matrices and conv filters (not embeddings, the decoder's head, gains or "
                        "biases) with Muon at this lr, following the same schedule (nanochat: 0.02); 0 = AdamW only")
    g.add_argument("--glyph-weight", type=float, default=D["glyph_weight"],
                   help="weight of the dense reading loss: each vision token must name the character in its "
                        "cell (synthetic data, which knows where it drew each character)")
    g.add_argument("--align-weight", type=float, default=D["align_weight"],
                   help="weight of the alignment loss: attention head 0 of decoder layers 0 and 1 is told which "
                        "vision token holds the character being read (synthetic data)")
    g.add_argument("--glyph-only", action="store_true",
                   help="train on the glyph loss alone, without running the decoder (an encoder warm-up)")
    g.add_argument("--vision-lr-mult", type=float, default=D["vision_lr_mult"],
                   help="SAM, compressor and CLIP train at lr times this")
    g.add_argument("--weight-decay", type=float, default=D["weight_decay"])
    g.add_argument("--schedule", default=D["schedule"], choices=["cosine", "step", "constant"])
    g.add_argument("--warmup-ratio", type=float, default=D["warmup_ratio"])
    g.add_argument("--step-size", type=int, default=D["step_size"], help="StepLR period (schedule=step)")
    g.add_argument("--grad-clip", type=float, default=D["grad_clip"])
    g.add_argument("--grad-checkpoint", action="store_true", help="recompute SAM's global blocks in backward")
    g.add_argument("--compile", action="store_true")
    g.add_argument("--dtype", default=D["dtype"], choices=["auto", "bf16", "fp32"],
                   help="autocast: auto = bf16 on CUDA, fp32 on CPU")
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="output folder (model/, deepencoder.safetensors, ckpt/, logs)")
    g.add_argument("--resume", action="store_true", help="continue from OUT/ckpt exactly")
    g.add_argument("--eval-every", type=int, default=D["eval_every"])
    g.add_argument("--eval-batches", type=int, default=D["eval_batches"])
    g.add_argument("--save-every", type=int, default=D["save_every"])
    g.add_argument("--workers", type=int, default=D["workers"], help="DataLoader workers per rank")
    g.add_argument("--seed", type=int, default=D["seed"])
    g.add_argument("--stop-after", type=int, default=D["stop_after"], help="stop after this step (simulates a crash)")
    g.add_argument("--device", default="auto")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    g.add_argument("--run", default=D["run"], help="wandb run name (logs to wandb only when given)")
    return p


def train_config(args, phase):
    """The TrainConfig of the parsed flags: every field that has a flag of its name, plus the run's identity."""
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    return TrainConfig(**given, out_dir=args.out, extra={"phase": phase, "train": args.train, "mode": args.mode,
                                                         "data": args.data, "text_ratio": args.text_ratio})


# ----------------------------------------------------------------------------- freeze policy

VISION_PARTS = ("sam", "compressor", "clip")
POLICIES = {
    "align": ("compressor", "projector"),  # Phase 1 (LLaVA-style alignment)
    "finetune": ("projector", "gpt"),  # Phase 2
    "all": tuple(PARTS),  # the seed's tier-1 recipe: everything trains
}


def parse_policy(spec):
    """A policy name or a comma list of parts (sam, compressor, clip, projector, gpt)."""
    parts = POLICIES.get(spec) or tuple(p.strip() for p in spec.split(",") if p.strip())
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise ValueError(f"--train {spec!r}: unknown part(s) {bad}; use {sorted(POLICIES)} or parts {list(PARTS)}")
    return set(parts)


def apply_freeze(model, parts):
    """requires_grad by part (model.set_trainable); -> the names of the parameters that train."""
    return model.set_trainable(parts)


def param_summary(model):
    out = {}
    for name, p in model.named_parameters():
        d = out.setdefault(part_of(name), {"trainable": 0, "frozen": 0})
        d["trainable" if p.requires_grad else "frozen"] += p.numel()
    return out



# ----------------------------------------------------------------------------- optimiser and schedule

def muon_params(model):
    """The parameters Muon trains: the weights of every Linear and Conv2d but the decoder's head (nanochat's
    split: embeddings, the head, gains and biases stay with AdamW)."""
    head = model.gpt.lm_head.weight
    return {id(m.weight) for m in model.modules()
            if isinstance(m, (nn.Linear, nn.Conv2d)) and m.weight is not head}


def build_optimizer(model, tc, device):
    """AdamW, or MuonAdamW when tc.matrix_lr is set; one param group per (lr multiplier, weight decay or not,
    Muon or not). A Muon group's lr_mult carries matrix_lr / lr, so one schedule (set_lr) drives both."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("nothing to train: the freeze policy leaves no trainable parameters")
    muon = muon_params(model) if tc.matrix_lr else set()
    groups = {}
    for name, p in named:
        # an encoder trained from scratch at the decoder's lr collapses (every image gives the same tokens)
        mult = tc.vision_lr_mult if part_of(name) in VISION_PARTS else 1.0
        decay, is_muon = p.ndim >= 2, id(p) in muon
        key = (mult, decay, is_muon)
        if key not in groups:
            groups[key] = {"params": [], "lr_mult": mult * (tc.matrix_lr / tc.lr if is_muon else 1.0),
                           "weight_decay": tc.weight_decay if decay else 0.0}
            if muon:
                groups[key]["muon"] = is_muon
        groups[key]["params"].append(p)
    if muon:
        return MuonAdamW(list(groups.values()), lr=tc.lr, betas=tc.betas)
    fused = str(device).startswith("cuda")
    return torch.optim.AdamW(list(groups.values()), lr=tc.lr, betas=tc.betas, fused=fused)


def set_lr(optimizer, lr):
    for g in optimizer.param_groups:
        g["lr"] = lr * g["lr_mult"]


def lr_at(step, total, base_lr, schedule="cosine", warmup_ratio=0.03, step_size=2000, gamma=0.1):
    warm = int(round(warmup_ratio * total))
    if step < warm:
        return base_lr * (step + 1) / warm
    if schedule == "cosine":
        return base_lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
    if schedule == "step":  # the seed's Stage-2 StepLR
        return base_lr * gamma ** ((step - warm) // step_size)
    if schedule == "constant":
        return base_lr
    raise ValueError(f"unknown schedule {schedule!r}")


# ----------------------------------------------------------------------------- batches


def grad_accum_steps(tc, d):
    """Micro-steps per optimiser step, so that batch_size x ranks x accumulation = total_batch_size."""
    if not tc.total_batch_size:
        return 1
    per_step = tc.batch_size * d.world
    if tc.total_batch_size % per_step:
        raise ValueError(f"total_batch_size {tc.total_batch_size} is not a multiple of batch_size x ranks "
                         f"({per_step})")
    return tc.total_batch_size // per_step


def to_device(batch, device):
    out = dict(batch)
    out["inputs"] = batch["inputs"].to(device, non_blocking=True)
    out["targets"] = batch["targets"].to(device, non_blocking=True)
    out["views"] = batch["views"].to(device) if batch["views"] is not None else None
    for labels, _, _ in AIDS.values():
        if batch.get(labels) is not None:
            out[labels] = batch[labels].to(device, non_blocking=True)
    return out


class Batches:
    """This rank's training batches from global sample `start` on, on the device, bad samples counted in
    `skips` (a batch whose every sample failed is passed over)."""

    def __init__(self, dataset, tc, d, start, skips):
        self.loader = iter(make_loader(dataset, tc.batch_size, start=start, rank=d.rank, world=d.world,
                                       workers=tc.workers, pin=d.device.startswith("cuda")))
        self.device, self.skips = d.device, skips

    def next(self):
        for _ in range(100):
            b = next(self.loader)
            self.skips.add(b)
            if b["inputs"] is not None:
                return to_device(b, self.device)
        # a config that makes every sample fail (a font too large for the page, a missing file) must stop the
        # run with its reason, not spin
        raise RuntimeError(f"100 batches in a row had no usable sample; first reasons: {self.skips.examples[:3]}")


# ----------------------------------------------------------------------------- one step


# the training aids from synthetic data: name -> (batch key of the labels, batch key of their count, weight field)
AIDS = {"glyph": ("glyphs", "glyph_cells", "glyph_weight"), "align": ("align", "align_keys", "align_weight")}


def active_aids(tc):
    return {k: v for k, v in AIDS.items() if getattr(tc, v[2])}


def micro_step(fwd, batch, tc, d, n_tok, n_aid):
    """Forward + backward of one micro-batch, scaled so the step's gradient is the global mean over target
    tokens (DDP averages over ranks, hence * world). -> (summed decoder loss, {aid: summed loss})."""
    aids = active_aids(tc)
    kw = {labels: batch.get(labels) for labels, _, _ in aids.values()}
    with autocast_ctx(d.device, tc.dtype):
        res = fwd(batch["inputs"], batch["targets"], views=batch["views"], loss_reduction="sum", **kw,
                  **({"decode": False} if tc.glyph_only else {}))
    loss, total, aux = res, res, {}
    if aids:
        loss, aux = res
        total = loss
        # each aid is a mean over the step's labelled cells/keys on all ranks, as the decoder's is over tokens
        for k, (_, _, weight) in aids.items():
            total = total + getattr(tc, weight) * aux[k] * (n_tok / n_aid[k])
        aux = {k: v.detach() for k, v in aux.items()}
    (total * (d.world / n_tok)).backward()
    return loss.detach(), aux


def accumulate(fwd, batches, tc, d):
    """Forward + backward of the step's micro-batches (gradients synced on the last one) -> the step's
    numbers. The loss is a mean over every target token of the global batch: the same update for any
    split over ranks and accumulation steps."""
    n_tok = all_sum(sum(int((b["targets"] >= 0).sum()) for b in batches), d)
    aids = active_aids(tc)
    n_aid = {k: max(1, all_sum(sum(b[count] for b in batches), d)) for k, (_, count, _) in aids.items()}
    loss_sum, aid_sum = 0.0, dict.fromkeys(aids, 0.0)
    for micro, batch in enumerate(batches):
        sync = nullcontext() if (not d.ddp or micro == len(batches) - 1) else fwd.no_sync()
        with sync:
            loss, aux = micro_step(fwd, batch, tc, d, n_tok, n_aid)
        loss_sum = loss_sum + loss
        aid_sum = {k: aid_sum[k] + aux[k] for k in aids}
    out = {"loss": all_sum(float(loss_sum), d) / n_tok, "n_tok": n_tok,
           "samples": sum(b["samples"] for b in batches) * d.world}
    for k in aids:
        out[f"{k}_loss"] = all_sum(float(aid_sum[k]), d) / n_aid[k]  # per labelled cell / key
    return out


def update(raw, optimizer, tc):
    """Clip, step, clear the gradients; -> the gradient norm before clipping (None without clipping)."""
    gnorm = torch.nn.utils.clip_grad_norm_(raw.parameters(), tc.grad_clip) if tc.grad_clip > 0 else None
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(gnorm) if gnorm is not None else None


def check_finite(loss, step, last_good, log):
    """The NaN guard: a non-finite loss ends the run, saying which checkpoint is intact."""
    if math.isfinite(loss):
        return
    msg = (f"loss is {loss} at step {step}; stopping. The last good checkpoint "
           f"({last_good or 'none saved yet'}) is intact.")
    if log:
        log.write({"kind": "error", "step": step, "message": msg})
        log.close()
    raise FloatingPointError(msg)


def step_flops(model, batch, device, dtype="auto"):
    """FLOPs of one forward+backward on `batch`, counted by torch's FlopCounterMode: includes SAM,
    CLIP, projector, decoder and attention, and only the backward work frozen parts really need."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter, autocast_ctx(device, dtype):
        loss = model(batch["inputs"], batch["targets"], views=batch["views"])
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def collapse_stats(model, views):
    """Mean pairwise cosine similarity between different images' features after SAM, CLIP and the
    projector. Collapsed encoders (the seed's failure) sit near 1.0; healthy ones well below."""
    out = {}
    for name, f in zip(("sam", "clip", "projector"), model.encode_stages(views.global_views)):
        # per-token features flattened per image, so two images are similar only if every position is
        v = F.normalize(f.flatten(1).float(), dim=-1)
        sim = v @ v.T
        n = sim.shape[0]
        out[name] = ((sim.sum() - sim.diagonal().sum()) / max(1, n * (n - 1))).item()
    return out


@torch.no_grad()
def evaluate_loss(model, val_ds, tc, d):
    """Mean validation loss over eval_batches (every rank reads its own slice of the same fixed samples)
    and the collapse monitor on the first batch with several images, as cos_sam, cos_clip, cos_projector."""
    model.eval()
    loader = iter(make_loader(val_ds, tc.batch_size, start=0, rank=d.rank, world=d.world, workers=0))
    total, count, cos = 0.0, 0, None
    for _ in range(tc.eval_batches):
        b = next(loader)
        if b["inputs"] is None:
            continue
        b = to_device(b, d.device)
        with autocast_ctx(d.device, tc.dtype):
            total += model(b["inputs"], b["targets"], views=b["views"]).item()
            if cos is None and b["views"] is not None and len(b["views"]) > 1:
                cos = collapse_stats(model, b["views"])
        count += 1
    model.train()
    ev = {"val_loss": all_mean(total / max(1, count), d)}
    for k, v in (cos or {}).items():
        ev[f"cos_{k}"] = all_mean(v, d)
    return ev


def report_eval(ev, step, tc, log):
    """The eval row in the log and one line on the terminal; a warning when the vision features collapse."""
    log.write({**ev, "kind": "eval", "step": step})
    cos = {k: v for k, v in ev.items() if k.startswith("cos_")}
    tqdm.write(f"step {step}: val loss {ev['val_loss']:.4f}" + "".join(f", {k} {v:.3f}" for k, v in cos.items()))
    worst = max(cos.values(), default=0.0)
    if worst > tc.collapse_threshold:
        tqdm.write(f"WARNING: vision features look collapsed (mean cosine similarity {worst:.3f} > "
                   f"{tc.collapse_threshold}): different images give nearly the same tokens. "
                   "Freeze more of the encoder, lower the lr, or use more varied data.")


# ----------------------------------------------------------------------------- logs

def read_rows(path):
    """The JSON-object lines of a .jsonl log; a malformed one (half a line from a kill) is skipped."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def lock_out_dir(out):
    """An exclusive lock on {out}/.lock for this process's life: two runs writing one --out folder would
    interleave checkpoints and logs and both crash. Raises naming the holder."""
    import fcntl
    f = open(Path(out) / ".lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise RuntimeError(f"{out}: another training run ({holder}) is using this --out folder; wait for it "
                           f"to finish or choose another --out") from None
    f.truncate(0)
    f.write(f"pid {os.getpid()}\n")
    f.flush()
    return f  # the lock lasts while this file stays open


class MetricsLog:
    """metrics.jsonl (master rank only), mirrored to wandb when a run name is given."""

    def __init__(self, path, resume_step=None, run=None, config=None):
        kept = []
        if resume_step is not None and Path(path).exists():  # drop what was logged after the checkpoint
            rows = read_rows(path)
            kept = [r for r in rows if isinstance(r.get("step", 0), int) and r.get("step", 0) <= resume_step
                    and r.get("kind") != "summary"]
        self.f = open(path, "w")
        for r in kept:
            self.f.write(json.dumps(r) + "\n")
        self.wandb = None
        if run:
            try:
                import wandb
            except ImportError:
                raise SystemExit("--run logs to wandb, which is not installed: pip install wandb") from None
            self.wandb = wandb.init(project="nano-deepseek-ocr", name=run, config=config, resume="allow")

    def write(self, rec):
        self.f.write(json.dumps(rec) + "\n")
        if self.wandb is not None and "step" in rec:
            nums = {f"{rec['kind']}/{k}": v for k, v in rec.items() if k != "step" and isinstance(v, (int, float))}
            self.wandb.log(nums, step=rec["step"])

    def flush(self):
        self.f.flush()

    def close(self):
        self.f.close()
        if self.wandb is not None:
            self.wandb.finish()


class Progress:
    """The train rows of the log and the progress bar (master rank only; a no-op elsewhere)."""

    def __init__(self, tc, d, step, log):
        self.log, self.peak, self.world, self.ema = log, peak_flops(d.device), d.world, None
        # redrawn often on a terminal; in a log file one line every few seconds is plenty
        self.bar = tqdm(total=tc.steps, initial=step, disable=not d.master, dynamic_ncols=True,
                        desc=tc.extra.get("phase"), mininterval=0.1 if sys.stderr.isatty() else 5.0)

    def step(self, step, lr, dt, res, flops):
        self.ema = res["loss"] if self.ema is None else 0.9 * self.ema + 0.1 * res["loss"]
        rec = {"kind": "train", "step": step, "loss": res["loss"], "lr": lr, "dt": dt, "tok_s": res["n_tok"] / dt,
               "samples_s": res["samples"] / dt, "grad_norm": res.get("grad_norm")}
        rec.update({f"{k}_loss": res[f"{k}_loss"] for k in AIDS if f"{k}_loss" in res})
        if flops and self.peak:
            rec["mfu"] = flops / dt / (self.peak * self.world)
        if self.log:
            self.log.write(rec)
        post = {"loss": f"{self.ema:.3f}", "lr": f"{lr:.1e}", "tok/s": f"{rec['tok_s']:.0f}",
                "smp/s": f"{rec['samples_s']:.1f}"}
        post.update({k: f"{rec[f'{k}_loss']:.2f}" for k in AIDS if f"{k}_loss" in rec})
        if "mfu" in rec:
            post["mfu"] = f"{100 * rec['mfu']:.1f}%"
        self.bar.update(1)
        self.bar.set_postfix(post, refresh=False)


def plot_losses(log_path, png_path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = read_rows(log_path)
    num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    curves = {}  # label -> [(step, value)]: the decoder's loss, the aids' losses, the validation loss
    for r in rows:
        kind = r.get("kind")
        keys = {"train": ("loss", "glyph_loss", "align_loss"), "eval": ("val_loss",)}.get(kind, ())
        for k in keys:
            if num(r.get("step")) and num(r.get(k)) and r[k] > 0:  # a glyph-only warm-up logs a zero decoder loss
                curves.setdefault("train" if k == "loss" else k, []).append((r["step"], r[k]))
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, pts in curves.items():
        ax.plot(*zip(*pts), "o-" if label == "val_loss" else "-", label=label, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- checkpoints


def resume_training(resume, model, optimizer, skips, tc, d):
    """Restore weights, optimiser, this rank's RNG states and the bad-sample counts; -> the step. A time-budgeted
    run keeps the step count it had settled on (the budget is not measured again)."""
    step, extra = ck.load_training_state(resume, model, optimizer)
    ck.set_rng_state(extra["rng"][d.rank] if isinstance(extra.get("rng"), list) else extra["rng"])
    skips.counts.update(extra.get("skips", {}).get("by_reason", {}))
    if tc.time_budget:
        tc.steps = min(tc.steps, extra.get("train_config", {}).get("steps", tc.steps))
        tc.time_budget = 0.0
    print0(f"resumed from {resume} at step {step}")
    return step


def save_checkpoint(out, step, raw, optimizer, skips, tc, d, log, on_save, last):
    """The training state (every rank's RNG states included) to {out}/ckpt, then on_save (the model folder).
    The log's rows up to this step reach the disk first, so a kill mid-save cannot lose what it claims."""
    if log:
        log.flush()
    rng = all_gather(ck.rng_state(), d)
    if d.master:
        ck.save_training_state(out / "ckpt", step, raw, optimizer,
                               {"rng": rng, "skips": skips.summary(), "train_config": asdict(tc)})
        if on_save:
            on_save(raw, step, last)
    return f"{out / 'ckpt'} (step {step})"


# ----------------------------------------------------------------------------- the loop


class TimeBudget:
    """How many steps fit in `seconds` of wall clock from the loop's start: measured after the first 30 steps and
    again every 200 steps until 80 % of the run (a machine twice as slow trains half as many steps, on a schedule
    laid over those). Ranks share one step time (their mean), so DDP ranks stop together."""

    def __init__(self, seconds, start, d):
        self.seconds, self.start, self.d, self.t0 = seconds, start, d, time.time()

    def steps(self, step, steps, cap):
        done = step - self.start
        if done < 30 or (done - 30) % 200 or step > 0.8 * steps:
            return steps
        per_step = all_mean((time.time() - self.t0) / done, self.d)
        return max(step + 1, min(cap, self.start + int(self.seconds / per_step)))


def wrap_model(model, tc, d, find_unused):
    """The module the steps call: compiled and/or DDP-wrapped as asked; `model` itself is what is saved."""
    fwd = torch.compile(model) if tc.compile else model
    if d.ddp:
        fwd = torch.nn.parallel.DistributedDataParallel(
            fwd, device_ids=[d.local_rank] if d.device.startswith("cuda") else None,
            find_unused_parameters=find_unused)
    return fwd


def fit(model, train_ds, val_ds, tc, d, resume=None, find_unused=False, on_save=None):
    """Train `model` (freeze policy already applied). Returns a summary dict.
    Checkpoints go to {out_dir}/ckpt (training state); on_save(model, step, last) writes the model folder."""
    out = Path(tc.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lock = lock_out_dir(out) if d.master else None
    torch.manual_seed(tc.seed + d.rank)
    accum = grad_accum_steps(tc, d)
    model.to(d.device)
    model.sam_model.grad_checkpoint = tc.grad_checkpoint
    optimizer = build_optimizer(model, tc, d.device)
    skips = SkipLog()
    step = resume_training(resume, model, optimizer, skips, tc, d) if resume else 0
    budget, cap = (TimeBudget(tc.time_budget, step, d) if tc.time_budget else None), tc.steps
    fwd = wrap_model(model, tc, d, find_unused)
    data = Batches(train_ds, tc, d, step * tc.batch_size * d.world * accum, skips)
    log_path = out / "metrics.jsonl"
    log = MetricsLog(log_path, step if resume else None, tc.run, asdict(tc)) if d.master else None
    progress = Progress(tc, d, step, log)
    start, flops, last_good, t_start = step, None, None, time.time()
    model.train()
    while True:
        if step > start:  # after each step: eval, save, then stop or go on
            last = step == tc.steps
            if val_ds is not None and (step % tc.eval_every == 0 or last):
                ev = evaluate_loss(model, val_ds, tc, d)
                if d.master:
                    report_eval(ev, step, tc, log)
            if step % tc.save_every == 0 or last:
                last_good = save_checkpoint(out, step, model, optimizer, skips, tc, d, log, on_save, last)
            if tc.stop_after and step >= tc.stop_after:
                break
        if step >= tc.steps:
            break
        lr = lr_at(step, tc.steps, tc.lr, tc.schedule, tc.warmup_ratio, tc.step_size)
        set_lr(optimizer, lr)
        t0 = time.time()
        # the step's micro-batches come first: the loss is a mean over all of their target tokens
        batches = [data.next() for _ in range(accum)]
        if flops is None and d.master:
            flops = step_flops(model, batches[0], d.device, tc.dtype) * accum * d.world
        res = accumulate(fwd, batches, tc, d)
        check_finite(res["loss"], step, last_good, log)
        res["grad_norm"] = update(model, optimizer, tc)
        step += 1
        if budget:
            tc.steps = progress.bar.total = budget.steps(step, tc.steps, cap)
        progress.step(step, lr, time.time() - t0, res, flops)
    progress.bar.close()
    summary = {"steps": step, "seconds": time.time() - t_start, "skips": skips.summary()}
    if d.master:
        finish_log(log, log_path, summary, tc)
        lock.close()
    return summary


def finish_log(log, log_path, summary, tc):
    """The summary row, the loss plot, and a line about bad samples when there were any."""
    log.write({"kind": "summary", **summary})
    log.close()
    plot_losses(log_path, Path(tc.out_dir) / "loss.png", tc.extra.get("phase", "training"))
    s = summary["skips"]
    if s["skipped"] or s["truncated"]:
        print(f"data: skipped {s['skipped']} bad samples {s['by_reason']}, truncated {s['truncated']}")


# ----------------------------------------------------------------------------- script glue

def build_datasets(args, model, tokenizer):
    """-> (train dataset, val dataset or None, find_unused_parameters)."""
    from nanoocr.data import DataConfig, Mixture, OCRDataset, open_source
    from nanoocr.synth import SynthConfig, parse_kinds

    synth_cfg = SynthConfig()
    if args.synth_kinds:
        synth_cfg.kinds = parse_kinds(args.synth_kinds)
    train_synth = synth_cfg.with_overrides(args.synth_set)
    sources = [open_source(s, train_synth) for s in args.data]
    if args.synth_limit:
        for s in sources:
            if hasattr(s, "size"):
                s.size = args.synth_limit
    weights = args.data_weights or [1.0] * len(sources)
    if len(weights) != len(sources):
        raise ValueError(f"--data-weights has {len(weights)} values for {len(sources)} sources")
    if args.text_data and args.text_ratio > 0:
        sources.append(open_source("text:" + args.text_data if not args.text_data.startswith("text:")
                                   else args.text_data))
        weights = [w * (1 - args.text_ratio) / sum(weights) for w in weights] + [args.text_ratio]
    dcfg = DataConfig(mode=args.mode, seq_len=args.seq_len or model.config.gpt.sequence_len,
                      glyphs=args.glyph_weight > 0 or args.align_weight > 0)
    train = OCRDataset(Mixture(sources, weights, seed=args.seed), tokenizer, model.config, dcfg)
    val = None
    if args.val_data:
        val = OCRDataset(Mixture([open_source(args.val_data, synth_cfg)], seed=12345), tokenizer, model.config, dcfg)
    # DDP must not wait for gradients no sample gives: text-only batches skip the encoder, --glyph-only the decoder
    return train, val, bool(args.text_data and args.text_ratio > 0) or args.glyph_only


def run_phase(args, model, tokenizer, phase, d):
    """Apply the freeze policy, train, and write OUT/model + OUT/deepencoder.safetensors."""
    if args.glyph_only and args.glyph_weight <= 0:
        raise ValueError("--glyph-only trains on the glyph loss alone: give it a --glyph-weight > 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    trainable = apply_freeze(model, parse_policy(args.train))
    summary = param_summary(model)
    print0(f"{phase}: training {len(trainable)} tensors")
    for part, c in summary.items():
        print0(f"  {part:11s} trainable {c['trainable'] / 1e6:9.3f}M  frozen {c['frozen'] / 1e6:9.3f}M")
    train_ds, val_ds, find_unused = build_datasets(args, model, tokenizer)
    out = Path(args.out)
    resume = out / "ckpt" if args.resume else None
    if resume and not ck.has_training_state(resume):
        raise FileNotFoundError(f"--resume: no checkpoint in {resume}")

    def on_save(m, step, last):
        ck.save_model(m, out / "model", tokenizer, meta={"phase": phase, "step": step, "train": args.train})
        ck.save_deepencoder(m, out / "deepencoder.safetensors")

    result = fit(model, train_ds, val_ds, train_config(args, phase), d, resume=resume, find_unused=find_unused,
                 on_save=on_save)
    teardown_dist(d)
    result["params"] = summary
    if d.master:
        (out / "summary.json").write_text(json.dumps(result, indent=2))
    return result
