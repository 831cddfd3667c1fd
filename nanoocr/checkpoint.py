"""
Our own checkpoint formats. No pickle anywhere: tensors go to safetensors, everything else to JSON.

  model folder     config.json (format, OCRConfig, image_token_id, meta) + model.safetensors + tokenizer.json
  training state   {dir}/latest.json -> {dir}/step_NNNNNN/ model.safetensors, optim.safetensors, state.json
  deepencoder      one safetensors file: SAM + compressor + CLIP + projector (the Phase 1 -> Phase 2 handoff)

Every write is atomic and every read strict (fileio.py): a crash mid-save leaves the previous checkpoint
intact, and a missing or unexpected key, a wrong shape, a truncated file or a corrupt config is an error
that names the file, the key and the shapes.
"""

import base64
import json
import random
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from nanoocr.fileio import (
    CheckpointError,
    atomic_write_bytes,
    atomic_write_json,
    check_state_dict,
    clean_stale,
    json_bytes,
    read_json,
    read_safetensors,
    replace_dir,
    resolve_dir,
    temp_dir_for,
    write_safetensors,
)
from nanoocr.model import NanoDeepseekOCR, part_of
from nanoocr.presets import OCRConfig
from nanoocr.tokenizer import Tokenizer

MODEL_FORMAT = "nanoocr-model-v1"
TRAIN_FORMAT = "nanoocr-train-v1"
DEEPENCODER_FORMAT = "nanoocr-deepencoder-v1"
DEEPENCODER_PARTS = ("sam", "compressor", "clip", "projector")  # everything but the decoder


def _unwrap(model):
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


# ----------------------------------------------------------------------------------------------
# the model folder


def save_model(model, out_dir, tokenizer=None, meta=None):
    """Write config.json + model.safetensors (+ tokenizer.json) into `out_dir`, replacing it atomically."""
    model = _unwrap(model)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "config.json").exists())):
        raise FileExistsError(f"{out}: exists and is not a model folder; refusing to replace it")
    image_id = model.image_token_id
    if tokenizer is not None:
        tok_id = tokenizer.image_id
        if image_id is not None and tok_id is not None and image_id != tok_id:
            raise ValueError(f"model.image_token_id is {image_id} but the tokenizer's <|image|> is {tok_id}")
        image_id = image_id if image_id is not None else tok_id
        if tokenizer.vocab_size > model.config.gpt.vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the decoder only "
                             f"{model.config.gpt.vocab_size} embedding rows")
    config = {"format": MODEL_FORMAT, "config": model.config.to_dict(), "image_token_id": image_id,
              "meta": meta or {}}
    config_bytes = json_bytes(config, "save_model: meta")
    with temp_dir_for(out) as tmp:
        write_safetensors(tmp / "model.safetensors", model.state_dict(), {"format": MODEL_FORMAT})
        if tokenizer is not None:
            tokenizer.save(str(tmp))
            if not (tmp / "tokenizer.json").is_file():
                raise RuntimeError(f"{type(tokenizer).__name__}.save wrote no tokenizer.json")
        atomic_write_bytes(tmp / "config.json", config_bytes)
        replace_dir(tmp, out)
    return out


def _fill_buffers(model, device):
    """Non-persistent buffers are not in the file: after a meta-device build they must be recomputed."""
    gpt = model.gpt
    cos, sin = gpt._rotary(gpt.cos.shape[0], gpt.head_dim, gpt.rotary_base)  # the length GPT.__init__ chose
    gpt.cos, gpt.sin = cos.to(device), sin.to(device)
    left = [n for n, b in model.named_buffers() if b.is_meta]
    if left:
        raise RuntimeError(f"load_model: cannot rebuild the buffer(s) {left}; teach checkpoint._fill_buffers")


def load_model(model_dir, device="cpu", dtype=None, need_tokenizer=False):
    """(model, tokenizer or None, meta) from a folder written by save_model (or an HF repo id holding one).
    need_tokenizer: a folder without tokenizer.json is an error (whoever reads or trains needs one)."""
    d = resolve_dir(model_dir, "model folder")
    expect = "a model folder with config.json and model.safetensors (written by save_model or import-weights)"
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no such folder; expected {expect}")
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: missing; expected {expect}")
    doc = read_json(cfg_path, "model config")
    if not isinstance(doc, dict) or doc.get("format") != MODEL_FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise CheckpointError(f"{cfg_path}: format is {found!r}, expected {MODEL_FORMAT!r}")
    try:
        cfg = OCRConfig.from_dict(doc["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{cfg_path}: bad model config: {e}") from None
    # Built on the meta device: no memory and no random init for weights the file overwrites (d20: 962M).
    with torch.device("meta"):
        model = NanoDeepseekOCR(cfg)
    weights = d / "model.safetensors"
    state, _ = read_safetensors(weights, device=device)
    check_state_dict(model.state_dict(), state, weights)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    _fill_buffers(model, device)
    model.image_token_id = doc.get("image_token_id")
    tokenizer = None
    if need_tokenizer and not (d / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{d}: the model folder has no tokenizer.json")
    if (d / "tokenizer.json").is_file():
        tokenizer = Tokenizer.from_directory(str(d))
        if tokenizer.vocab_size > cfg.gpt.vocab_size:
            raise CheckpointError(f"{d / 'tokenizer.json'}: {tokenizer.vocab_size} tokens but {weights} has "
                                  f"only {cfg.gpt.vocab_size} embedding rows")
        if model.image_token_id is not None and tokenizer.image_id != model.image_token_id:
            raise CheckpointError(f"{d / 'tokenizer.json'}: <|image|> is id {tokenizer.image_id} but "
                                  f"{cfg_path} says image_token_id {model.image_token_id}")
    return model, tokenizer, doc.get("meta") or {}


# ----------------------------------------------------------------------------------------------
# DeepEncoder: the Phase 1 -> Phase 2 handoff


def _deepencoder_state(model):
    return {k: v for k, v in model.state_dict().items() if part_of(k) in DEEPENCODER_PARTS}


def save_deepencoder(model, path):
    """SAM, compressor, CLIP, projector, image_newline and view_separator in one safetensors file."""
    model = _unwrap(model)
    c = model.config
    meta = {"format": DEEPENCODER_FORMAT, "sam": json.dumps(c.to_dict()["sam"]),
            "clip": json.dumps(c.to_dict()["clip"]), "n_embd": c.gpt.n_embd}
    write_safetensors(path, _deepencoder_state(model), meta)
    return Path(path)


@torch.no_grad()
def load_deepencoder(model, path):
    """Load save_deepencoder's file into `model` (strict on those keys); the decoder is left alone."""
    model = _unwrap(model)
    path = Path(path)
    state, meta = read_safetensors(path)
    if meta.get("format") != DEEPENCODER_FORMAT:
        raise CheckpointError(f"{path}: format is {meta.get('format')!r}, expected {DEEPENCODER_FORMAT!r}")
    ours = model.config.to_dict()
    for part in ("sam", "clip"):
        theirs = json.loads(meta.get(part, "{}"))
        diff = {k: (theirs.get(k), v) for k, v in ours[part].items() if theirs.get(k) != v}
        if diff:
            raise CheckpointError(f"{path}: {part} config differs from the model's (file, model): {diff}")
    expected = _deepencoder_state(model)
    check_state_dict(expected, state, path)
    for k, v in state.items():
        expected[k].copy_(v)


# ----------------------------------------------------------------------------------------------
# training state: model + optimizer + step + extra (RNG states, data position, ...)


def _param_names(model, optimizer):
    names = {id(p): n for n, p in model.named_parameters()}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    return [names.get(id(p), "<not in model>") for p in params], [list(p.shape) for p in params]


def _flatten_optimizer(optimizer):
    """Optimizer state dict -> ({"state.{i}.{name}": tensor, "group.{g}.{key}": tensor}, JSON-able rest)."""
    sd = optimizer.state_dict()
    tensors, scalars, groups = {}, {}, []
    for i, st in sd["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{i}.{name}"] = v
            else:
                scalars.setdefault(str(i), {})[name] = v
    for gi, g in enumerate(sd["param_groups"]):
        plain = {}
        for key, v in g.items():
            if torch.is_tensor(v):  # e.g. a tensor learning rate
                tensors[f"group.{gi}.{key}"] = v
            else:
                plain[key] = list(v) if isinstance(v, tuple) else v
        groups.append(plain)
    return tensors, {"param_groups": groups, "scalars": scalars}


def _unflatten_optimizer(optimizer, tensors, rest, source):
    state = {}
    for k, v in tensors.items():
        kind, idx, name = k.split(".", 2)
        if kind == "state":
            state.setdefault(int(idx), {})[name] = v
    for idx, st in rest["scalars"].items():
        state.setdefault(int(idx), {}).update(st)
    groups = []
    for gi, g in enumerate(rest["param_groups"]):
        g = dict(g)
        for k, v in tensors.items():
            if k.startswith(f"group.{gi}."):
                g[k.split(".", 2)[2]] = v
        if gi < len(optimizer.param_groups):  # betas were a tuple before JSON made them a list
            for key, cur in optimizer.param_groups[gi].items():
                if isinstance(cur, tuple) and isinstance(g.get(key), list):
                    g[key] = tuple(g[key])
        groups.append(g)
    if len(groups) != len(optimizer.param_groups):
        raise CheckpointError(f"{source}: {len(groups)} param groups saved, the optimizer has "
                              f"{len(optimizer.param_groups)}")
    return {"state": state, "param_groups": groups}


def _step_dir(root, step):
    return Path(root) / f"step_{step:06d}"


def save_training_state(path_dir, step, model, optimizer, extra=None, keep=2):
    """Write {path_dir}/step_NNNNNN/ (via a .tmp folder and a rename), then point latest.json at it.
    A crash at any point leaves the previous checkpoint and pointer intact. Keeps the newest `keep`."""
    model = _unwrap(model)
    root = Path(path_dir)
    root.mkdir(parents=True, exist_ok=True)
    for name in {m.group(1) for p in root.glob(".step_*") if (m := re.match(r"\.(step_\d+)\.", p.name))}:
        clean_stale(root / name)  # copies left by a save that was killed
    final = _step_dir(root, step)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)  # left by a crash
    tmp.mkdir()
    doc = {"format": TRAIN_FORMAT, "step": int(step), "extra": extra or {}}
    if optimizer is not None:
        tensors, rest = _flatten_optimizer(optimizer)
        names, shapes = _param_names(model, optimizer)
        doc["optimizer"] = {**rest, "type": type(optimizer).__name__, "param_names": names,
                            "param_shapes": shapes}
        write_safetensors(tmp / "optim.safetensors", tensors, {"format": TRAIN_FORMAT})
    try:
        state_bytes = json_bytes(doc, "save_training_state: extra")
    except TypeError:
        shutil.rmtree(tmp)
        raise
    write_safetensors(tmp / "model.safetensors", model.state_dict(), {"format": TRAIN_FORMAT})
    atomic_write_bytes(tmp / "state.json", state_bytes)
    replace_dir(tmp, final)
    atomic_write_json(root / "latest.json", {"step": int(step), "dir": final.name})
    steps = sorted((p for p in root.glob("step_*") if p.is_dir() and re.fullmatch(r"step_\d+", p.name)),
                   key=lambda p: int(p.name[5:]))
    stale = [p for p in root.glob("step_*.tmp") if p.is_dir()]  # from earlier crashes
    for old in (steps[:-keep] if keep else []) + stale:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _step_dirs(root):
    """Complete step folders under `root`, newest first."""
    steps = [p for p in Path(root).glob("step_*") if re.fullmatch(r"step_\d+", p.name) and (p / "state.json").is_file()]
    return sorted(steps, key=lambda p: int(p.name[5:]), reverse=True)


def _latest_dir(path_dir):
    root = Path(path_dir)
    if (root / "state.json").is_file():  # a step folder itself
        return root
    pointer = root / "latest.json"
    if not pointer.is_file():
        raise FileNotFoundError(f"{root}: no training checkpoint (expected latest.json, or a step folder "
                                f"with state.json)")
    doc = read_json(pointer, "checkpoint pointer")
    name = doc.get("dir") if isinstance(doc, dict) else None
    if not name or not (root / str(name) / "state.json").is_file():
        raise CheckpointError(f"{pointer}: points at {name!r}, which is no step folder with a state.json")
    return root / str(name)


def has_training_state(path_dir):
    try:
        _latest_dir(path_dir)
        return True
    except (FileNotFoundError, CheckpointError):
        return bool(_step_dirs(path_dir))


def load_training_state(path_dir, model, optimizer=None):
    """Restore model weights and optimizer state in place (the optimizer keeps its parameter objects).
    Returns (step, extra). A corrupt newest checkpoint (or pointer) is not fatal while an older complete
    one is on disk: that one is loaded and a warning says so. If none loads, the newest one's error."""
    root = Path(path_dir)
    try:
        newest, pointer_error = _latest_dir(root), None
    except (FileNotFoundError, CheckpointError) as e:
        if not _step_dirs(root):
            raise
        newest, pointer_error = None, e
    candidates = [newest] if newest is not None else []
    if newest is None or newest.parent == root:  # a step folder given directly has no siblings to fall back to
        candidates += [d for d in _step_dirs(root) if d != newest
                       and (newest is None or int(d.name[5:]) < int(newest.name[5:]))]
    first_error = pointer_error
    for d in candidates:
        try:
            result = _load_step(d, model, optimizer)
        except (FileNotFoundError, CheckpointError) as e:
            first_error = first_error or e
            continue
        if first_error is not None:
            print(f"warning: {first_error}\nwarning: resuming from the previous checkpoint {d} instead",
                  file=sys.stderr)
        return result
    raise first_error


@torch.no_grad()
def _load_step(d, model, optimizer):
    model = _unwrap(model)
    doc = read_json(d / "state.json", "training state")
    if not isinstance(doc, dict) or doc.get("format") != TRAIN_FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise CheckpointError(f"{d / 'state.json'}: format is {found!r}, expected {TRAIN_FORMAT!r}")
    weights = d / "model.safetensors"
    state, _ = read_safetensors(weights)
    own = model.state_dict()
    check_state_dict(own, state, weights)
    if optimizer is not None:
        if "optimizer" not in doc:
            raise CheckpointError(f"{d}: saved without optimizer state")
        o = doc["optimizer"]
        if o.get("type", type(optimizer).__name__) != type(optimizer).__name__:
            raise CheckpointError(f"{d}: the optimizer state is {o['type']}'s, this run's optimizer is "
                                  f"{type(optimizer).__name__} (resume with the optimizer settings it was saved with)")
        names, shapes = _param_names(model, optimizer)
        if names != o["param_names"] or shapes != o["param_shapes"]:
            diff = [(i, a, b) for i, (a, b) in enumerate(zip(o["param_names"], names)) if a != b][:5]
            raise CheckpointError(
                f"{d}: the optimizer state is for {len(o['param_names'])} parameters, this optimizer has "
                f"{len(names)} (a different freeze policy?); first differences (index, saved, now): {diff}")
        tensors, _ = read_safetensors(d / "optim.safetensors")  # read before anything is changed
        opt_state = _unflatten_optimizer(optimizer, tensors, o, d / "optim.safetensors")
    for k, v in state.items():
        own[k].copy_(v)
    if optimizer is not None:
        optimizer.load_state_dict(opt_state)
    return doc["step"], doc.get("extra", {})


# ----------------------------------------------------------------------------------------------
# RNG states as JSON


def _b64(t):
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s):
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def rng_state():
    """Python, numpy, torch CPU and CUDA generator states as a JSON-able dict."""
    py = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    d = {"python": [py[0], list(py[1]), py[2]],
         "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
         "torch": _b64(torch.get_rng_state())}
    if torch.cuda.is_available():
        d["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return d


def set_rng_state(d):
    if "python" in d:
        v, state, gauss = d["python"]
        random.setstate((v, tuple(state), gauss))
    if "numpy" in d:
        kind, keys, pos, has_gauss, cached = d["numpy"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "torch" in d:
        torch.set_rng_state(_unb64(d["torch"]))
    if d.get("cuda") and torch.cuda.is_available():
        states = [_unb64(s) for s in d["cuda"]]
        for i, s in enumerate(states[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)
