"""
What every script shares, with no project imports (nanochat's common.py): the device and autocast
choice, torchrun set-up and teardown, sums and means across ranks, print0, and the peak FLOPs for MFU.
"""

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def pick_device(device="auto"):
    """"auto" is CUDA when there is one, else the CPU; asking for CUDA where there is none is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device}: CUDA is not available on this machine")
    return device


def autocast_dtype(device, dtype="auto"):
    """The autocast dtype for `device`, None for none (fp32). "auto" is bf16 on CUDA and fp32 on CPU; bf16 on
    CPU only when asked: this 2-core CPU multiplies bf16 ~3x faster than fp32, and the speedrun measures that
    its loss still falls. dtype: "auto", a DTYPES name, a torch dtype, or None."""
    if dtype == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else None
    dtype = DTYPES.get(dtype, dtype)
    return None if dtype in (None, torch.float32) else dtype


def autocast_ctx(device, dtype="auto"):
    """The autocast context for `device` and `dtype` (see autocast_dtype); a no-op for fp32."""
    dt = autocast_dtype(device, dtype)
    if dt is None:
        return nullcontext()
    return torch.autocast("cuda" if str(device).startswith("cuda") else "cpu", dtype=dt)


# ----------------------------------------------------------------------------------------------
# distributed


@dataclass
class Dist:
    ddp: bool = False
    rank: int = 0
    local_rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def master(self):
        return self.rank == 0


def setup_dist(device="auto"):
    """torchrun sets RANK/WORLD_SIZE: nccl on GPU, gloo on CPU."""
    if device == "auto":
        device = pick_device(device)
    if "RANK" not in os.environ:
        return Dist(device=device)
    rank, local, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    if device == "cuda":
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Dist(True, rank, local, world, device)


def teardown_dist(d):
    """End the process group; a rank that exits while another still talks to it aborts the whole job
    ("terminate called ..."), hence the barrier first."""
    if d.ddp:
        dist.barrier()
        dist.destroy_process_group()


def all_sum(x, d):
    if not d.ddp:
        return x
    t = torch.tensor([float(x)], dtype=torch.float64, device=d.device if d.device.startswith("cuda") else "cpu")
    dist.all_reduce(t)
    return t.item()


def all_mean(x, d):
    return all_sum(x, d) / d.world


def all_gather(obj, d):
    """[obj of rank 0, obj of rank 1, ...] with DDP; obj itself without."""
    if not d.ddp:
        return obj
    gathered = [None] * d.world
    dist.all_gather_object(gathered, obj)
    return gathered


def print0(*args, **kwargs):
    """print on the master rank only (every rank when not launched by torchrun)."""
    if int(os.environ.get("RANK", 0)) == 0:
        print(*args, **kwargs)


# ----------------------------------------------------------------------------------------------
# MFU


def peak_flops(device):
    """Dense bf16 peak for MFU; None where unknown (CPU): set NANOOCR_PEAK_FLOPS to report MFU there."""
    if os.environ.get("NANOOCR_PEAK_FLOPS"):
        return float(os.environ["NANOOCR_PEAK_FLOPS"])
    if not str(device).startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    # dense bf16 peaks; the PCIe H100 is clocked lower than the SXM one
    for key, val in (("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12), ("L4", 121e12),
                     ("4090", 165e12)):
        if key in name:
            return val
    return None
