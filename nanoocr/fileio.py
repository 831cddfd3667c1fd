"""
File IO every loader and writer shares, with no project imports: atomic writes, strict JSON and
safetensors reads, the one key/shape checker, and Hugging Face repo ids in place of local folders.

Every write is atomic (temp file or temp folder, then a rename), so a crash mid-write leaves the previous
file intact. Every read is strict: a missing or unexpected key, a wrong shape, a truncated file or a
corrupt document is an error that names the file, the key and the shapes.
"""

import contextlib
import glob
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


class CheckpointError(ValueError):
    """A weights or config file that is unreadable or does not fit the model; the message names the file."""


# ----------------------------------------------------------------------------------------------
# atomic writes


def _fsync_dir(path):
    # the rename itself must reach the disk too, or a crash can undo it
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temp path next to `path`; when the block succeeds it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data):
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path, obj):
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive but not ours
        return True
    return True


def clean_stale(dest):
    """Remove what a save killed mid-way (kill -9, power loss) left next to `dest`: .tmp-PID-* and
    .old-PID copies of processes that are gone (a full model each). If the kill came between the two
    renames of replace_dir, `dest` is missing and its complete previous version is put back first."""
    dest = Path(dest)
    if not dest.parent.is_dir():
        return
    for p in sorted(dest.parent.glob(f".{glob.escape(dest.name)}.*")):
        m = re.fullmatch(rf"\.{re.escape(dest.name)}\.(old|tmp)-(\d+)(-.*)?", p.name)
        if not m or _pid_alive(int(m.group(2))):
            continue
        if m.group(1) == "old" and not dest.exists():
            os.replace(p, dest)
        else:
            shutil.rmtree(p, ignore_errors=True)


def replace_dir(tmp, dest):
    """Move the finished folder `tmp` to `dest`. Linux cannot swap two folders in one step, so the old one
    is renamed aside first: a crash in between leaves both complete folders on disk, never a mixed one."""
    tmp, dest = Path(tmp), Path(dest)
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(dest, old)
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def temp_dir_for(dest):
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(dest)
    # the pid in the name tells a later save whether its writer is gone (then it is garbage)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-{os.getpid()}-", dir=dest.parent))
    os.chmod(tmp, 0o755)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when it was renamed into place


# ----------------------------------------------------------------------------------------------
# reading, with errors that name the file


def _fmt_keys(keys, limit=12):
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def read_json(path, what="JSON file"):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected the {what})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt {what}: {e}") from None


def read_safetensors(path, device="cpu", keys=None):
    """{name: tensor} of a safetensors file (only `keys` when given), and its metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            names = list(f.keys()) if keys is None else [k for k in f.keys() if k in keys]
            return {k: f.get_tensor(k) for k in names}, (f.metadata() or {})
    except Exception as e:  # SafetensorError for truncated/corrupt files, OSError for unreadable ones
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") \
            from None


def check_state_dict(expected, got, source, owners=None):
    """The one strict key and shape check. expected/got map names to tensors or shapes; owners, when given,
    names the model tensor each expected key fills (for a foreign file whose names differ from ours).
    Raises naming the file, the keys and the shapes."""
    shape = lambda v: tuple(v.shape) if hasattr(v, "shape") else tuple(v)
    missing, unexpected = set(expected) - set(got), set(got) - set(expected)
    errors = []
    if missing:
        errors.append(f"missing {len(missing)} key(s): {_fmt_keys(missing)}")
    if unexpected:
        errors.append(f"unexpected {len(unexpected)} key(s): {_fmt_keys(unexpected)}")
    for k in sorted(set(expected) & set(got)):
        want, have = shape(expected[k]), shape(got[k])
        if want != have:
            model_side = f"{owners[k]} needs {want}" if owners else f"{want} in the model"
            errors.append(f"{k}: shape {have} in the file but {model_side}")
    if errors:
        raise CheckpointError(f"{source}: " + "; ".join(errors))


def read_weight_map(index):
    """The shard files a transformers *.index.json lists, in order (each once)."""
    weight_map = read_json(index, "weights index").get("weight_map", {})
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: weight_map is not an object")
    return sorted(set(weight_map.values()))


def json_bytes(obj, who):
    """Indented JSON of `obj` as bytes; a value JSON cannot hold is a TypeError naming `who`."""
    try:
        return (json.dumps(obj, indent=2) + "\n").encode()
    except TypeError as e:
        raise TypeError(f"{who} must be JSON-serialisable ({e})") from None


def _tensors_for_save(state):
    """Contiguous CPU tensors, none sharing storage (safetensors refuses shared memory)."""
    out, seen = {}, set()
    for k, t in state.items():
        t = t.detach().cpu()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen or not t.is_contiguous():
            t = t.clone(memory_format=torch.contiguous_format)
        seen.add(t.untyped_storage().data_ptr())
        out[k] = t
    return out


def write_safetensors(path, tensors, metadata=None):
    with atomic_path(path) as tmp:
        meta = {k: str(v) for k, v in (metadata or {}).items()}
        save_file(_tensors_for_save(tensors), str(tmp), metadata=meta)


# ----------------------------------------------------------------------------------------------
# Hugging Face repo ids instead of local folders

HUB_PREFIX = "hf:"  # the one form that may reach the network: hf:org/name
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_dir(path, what, allow_patterns=None):
    """A local path as is (it may not exist: the caller says "no such folder"); "hf:org/name" is fetched
    with huggingface_hub when that is installed and online. Only the explicit hf: form reaches the network,
    so a mistyped local path such as models/d20 is never looked up as a repo. Any failure says how to pass
    a local folder instead."""
    if not str(path).startswith(HUB_PREFIX):
        return Path(path).expanduser()
    path = str(path)[len(HUB_PREFIX):]
    if not _REPO_ID.match(path):
        raise FileNotFoundError(f"{HUB_PREFIX}{path}: not a Hugging Face repo id (expected hf:org/name)")
    name = f"{HUB_PREFIX}{path}"
    hint = (f"Pass a local folder instead: download it where you have network access (for example "
            f"`hf download {path} --local-dir DIR`) and give DIR.")
    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError:
        raise FileNotFoundError(f"{name}: cannot fetch the {what}: huggingface_hub is not installed. "
                                f"{hint}") from None
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline or getattr(constants, "HF_HUB_OFFLINE", False):
        raise FileNotFoundError(f"{name}: cannot fetch the {what}: the Hugging Face Hub is offline "
                                f"(HF_HUB_OFFLINE). {hint}")
    try:
        return Path(snapshot_download(path, allow_patterns=allow_patterns))
    except Exception as e:
        raise FileNotFoundError(f"{name}: fetching the {what} from the Hugging Face Hub failed "
                                f"({type(e).__name__}: {e}). {hint}") from None
