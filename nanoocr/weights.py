"""
Foreign weights in, strictly. Each importer maps the source's key names onto ours, checks every key and
shape, and returns a Report: what was loaded, what was ignored (only keys documented below), and what is
left newly initialised. Anything else (an undocumented missing or unexpected key, a wrong shape, a config
that disagrees with ours) is an error naming the file, the key and the shapes.

  HF SAM (SamModel / SamVisionModel)   vision_encoder.* -> sam_model; prompt_encoder.*, mask_decoder.*,
                                        shared_image_embedding.* ignored; net_2/net_3 are not in SAM: fresh
  HF CLIP (CLIPModel / CLIPVisionModel) vision_model.* (or bare) -> vision_model, q/k/v fused into qkv_proj;
                                        text_model.*, logit_scale, *_projection, post_layernorm (DeepEncoder
                                        does not use it) and the position_ids buffer ignored
  nanochat (model_NNNNNN.pt + meta)     -> gpt, either format (2025, or 2026 when the meta has
                                        window_pattern); `_orig_mod.` stripped, optim_* files ignored; the
                                        real vocab (meta vocab_size) is loaded, the file's padding rows
                                        past it are ignored, our special tokens get fresh rows after it
  DeepSeek-OCR release (safetensors)    [model.]sam_model/vision_model/projector/image_newline/view_seperator;
                                        the 3B MoE language model (and the position_ids buffer) ignored,
                                        read shard by shard so it is never materialised
"""

import copy
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from nanoocr.checkpoint import save_model
from nanoocr.fileio import (
    CheckpointError,
    atomic_path,
    atomic_write_json,
    check_state_dict,
    read_json,
    read_safetensors,
    read_weight_map,
    resolve_dir,
    write_safetensors,
)
from nanoocr.gpt import table_rows
from nanoocr.model import PARTS, NanoDeepseekOCR, build_model, part_of
from nanoocr.presets import GPTConfig, OCRConfig, get_preset
from nanoocr.tokenizer import Tokenizer

# Without a tokenizer, rows for our special tokens (<|image|> and the grounding tokens) are reserved after
# the nanochat vocab: 65536 + 6 = the d20 preset's 65542. Their ids come with the tokenizer later.
RESERVED_SPECIAL_TOKENS = 6
NANOCHAT_CONFIG_KEYS = ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd")
NANOCHAT_KEYS_BY_FORMAT = {2025: NANOCHAT_CONFIG_KEYS, 2026: NANOCHAT_CONFIG_KEYS + ("window_pattern",)}


@dataclass
class Report:
    source: str
    loaded: list = field(default_factory=list)  # our parameter names that now hold the source's values
    ignored: dict = field(default_factory=dict)  # documented reason -> source keys skipped
    fresh: list = field(default_factory=list)  # our parameters the source has no values for
    notes: list = field(default_factory=list)

    def summary(self):
        lines = [f"{self.source}: loaded {len(self.loaded)} tensors"]
        lines += [f"  ignored {len(keys)} keys: {reason}" for reason, keys in self.ignored.items()]
        if self.fresh:
            lines.append(f"  newly initialised: {', '.join(self.fresh)}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    __str__ = summary


def _submodule(model, name):
    """(module, prefix): the part `name` of a NanoDeepseekOCR, or the bare part itself."""
    if isinstance(model, NanoDeepseekOCR):
        return getattr(model, name), f"{name}."
    return model, ""


@torch.no_grad()
def _load_mapped(own, plan, tensors, source, ignore=lambda k: None, fresh=(), prefix=""):
    """Copy source tensors into the state dict `own` following plan = {our name: [source keys]} (several
    keys are concatenated along dim 0: q, k, v). Strict: every planned key present with the right shape,
    every source key planned or ignored with a documented reason. Raises before touching the model."""
    expected, owners, ignored = {}, {}, defaultdict(list)
    for ours, srcs in plan.items():
        want = tuple(own[ours].shape)
        for s in srcs:
            expected[s] = (want[0] // len(srcs),) + want[1:] if want else want
            owners[s] = prefix + ours
    got = {}
    for k, t in tensors.items():
        reason = None if k in expected else ignore(k)
        if reason:
            ignored[reason].append(k)
        else:
            got[k] = t
    check_state_dict(expected, got, source, owners)
    for ours, srcs in plan.items():
        t = tensors[srcs[0]] if len(srcs) == 1 else torch.cat([tensors[s] for s in srcs])
        own[ours].copy_(t)
    return Report(str(source), loaded=[prefix + k for k in plan], ignored=dict(ignored),
                  fresh=[prefix + k for k in fresh])


# ----------------------------------------------------------------------------------------------
# Hugging Face folders (SAM, CLIP)

_HF_PATTERNS = ["*.json", "*.safetensors"]


def _torch_load(path):
    """A state dict from a torch file, without running pickled code; errors name the file."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # old non-zip format
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable torch state dict (truncated, corrupt, or holding more "
                              f"than tensors?): {_torch_error(e)}") from None


def _torch_error(e):
    """torch's error without its advice to re-run with weights_only=False: that would run the file's
    pickled code, which this project never does. What is left is the reason (e.g. the refused global)."""
    text = str(e)
    if "weights_only" not in text:
        return f"{type(e).__name__}: {text}"
    m = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
    return "it holds objects other than tensors, and loading those would run code from the file" + \
        (f" ({m.group(1).split('. ')[0].strip()})" if m else "")  # the reason, not the allowlisting advice


def _read_hf_weights(folder):
    """(tensors, description) of a transformers folder: safetensors (sharded or not), else a torch .bin."""
    indexes = (("model.safetensors.index.json", lambda f: read_safetensors(f)[0]),
               ("pytorch_model.bin.index.json", _torch_load))
    for index_name, read in indexes:
        index = folder / index_name
        if index.is_file():
            tensors = {}
            for shard in read_weight_map(index):
                tensors.update(read(folder / shard))
            return tensors, str(index)
    if (folder / "model.safetensors").is_file():
        return read_safetensors(folder / "model.safetensors")[0], str(folder / "model.safetensors")
    if (folder / "pytorch_model.bin").is_file():
        return _torch_load(folder / "pytorch_model.bin"), str(folder / "pytorch_model.bin")
    raise FileNotFoundError(f"{folder}: no model.safetensors or pytorch_model.bin (expected a folder written "
                            f"by transformers' save_pretrained)")


def _hf_folder(path, what):
    folder = resolve_dir(path, f"{what} folder", _HF_PATTERNS)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder; expected a transformers {what} folder "
                                f"(config.json + model.safetensors or pytorch_model.bin)")
    doc = read_json(folder / "config.json", f"{what} config")
    vision = doc.get("vision_config") or doc.get("vision_config_dict") or doc  # full model, or vision only
    return folder, vision


def _check_hf_config(path, checks):
    """checks: (their key, their value, our name, our value); all disagreements in one error."""
    bad = [f"{k} is {a!r} but {ours} is {b!r}" for k, a, ours, b in checks if a != b]
    if bad:
        raise CheckpointError(f"{path}: the checkpoint's config does not match ours: " + "; ".join(bad))


# transformers' defaults, for config.json files that leave them out
_SAM_DEFAULTS = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "patch_size": 16,
                 "image_size": 1024, "window_size": 14, "global_attn_indexes": [2, 5, 8, 11],
                 "output_channels": 256, "mlp_ratio": 4.0, "hidden_act": "gelu", "layer_norm_eps": 1e-6,
                 "qkv_bias": True, "use_abs_pos": True, "use_rel_pos": True, "num_channels": 3}
_CLIP_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                  "num_attention_heads": 12, "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu",
                  "layer_norm_eps": 1e-5, "num_channels": 3}

_SAM_TO_HF = [(r"^patch_embed\.proj\.", "patch_embed.projection."),
              (r"^blocks\.(\d+)\.norm(\d)\.", r"layers.\1.layer_norm\2."),
              (r"^blocks\.", "layers."),
              (r"^neck\.0\.", "neck.conv1."), (r"^neck\.1\.", "neck.layer_norm1."),
              (r"^neck\.2\.", "neck.conv2."), (r"^neck\.3\.", "neck.layer_norm2.")]


def _rename(name, rules):
    for pattern, repl in rules:
        name = re.sub(pattern, repl, name)
    return name


def load_hf_sam(model, path):
    """transformers SamModel / SamVisionModel weights -> sam_model (net_2, net_3 stay as they are)."""
    sam, prefix = _submodule(model, "sam_model")
    folder, hf = _hf_folder(path, "SAM")
    hf = {**_SAM_DEFAULTS, **hf}
    c = sam.cfg
    mlp_dim = hf.get("mlp_dim") or int(hf["hidden_size"] * hf["mlp_ratio"])
    _check_hf_config(folder / "config.json", [
        ("hidden_size", hf["hidden_size"], "sam.dim", c.dim),
        ("num_hidden_layers", hf["num_hidden_layers"], "sam.depth", c.depth),
        ("num_attention_heads", hf["num_attention_heads"], "sam.heads", c.heads),
        ("patch_size", hf["patch_size"], "sam.patch_size", c.patch_size),
        ("image_size // patch_size", hf["image_size"] // hf["patch_size"], "sam.pos_grid", c.pos_grid),
        ("window_size", hf["window_size"], "sam.window_size", c.window_size),
        ("global_attn_indexes", list(hf["global_attn_indexes"]), "sam.global_blocks", list(c.global_blocks)),
        ("output_channels", hf["output_channels"], "sam.neck_dim", c.neck_dim),
        ("mlp_dim", mlp_dim, "sam.dim * mlp_ratio", int(c.dim * c.mlp_ratio)),
        ("hidden_act", hf["hidden_act"], "our SAM activation", "gelu"),
        ("layer_norm_eps", hf["layer_norm_eps"], "our SAM LayerNorm eps", 1e-6),
        ("qkv_bias", hf["qkv_bias"], "our SAM qkv bias", True),
        ("use_abs_pos", hf["use_abs_pos"], "our SAM absolute positions", True),
        ("use_rel_pos", hf["use_rel_pos"], "our SAM relative positions", True),
        ("num_channels", hf["num_channels"], "our SAM input channels", 3)])
    tensors, source = _read_hf_weights(folder)
    # SamModel and SamVisionModel both save under vision_encoder.; a bare layout is accepted too
    bare = not any(k.startswith("vision_encoder.") for k in tensors)
    pre = "" if bare else "vision_encoder."
    fresh = [k for k in sam.state_dict() if k.startswith(("net_2.", "net_3."))]
    plan = {k: [pre + _rename(k, _SAM_TO_HF)] for k in sam.state_dict() if k not in fresh}

    def ignore(k):
        if k.startswith(("prompt_encoder.", "mask_decoder.", "shared_image_embedding.")):
            return "SAM prompt encoder / mask decoder (not part of DeepEncoder)"
        return None

    report = _load_mapped(sam.state_dict(), plan, tensors, source, ignore, fresh, prefix)
    report.notes.append("net_2/net_3 (the 16x compressor) are not in SAM: newly initialised")
    return report


def load_hf_clip(model, path):
    """transformers CLIPModel / CLIPVisionModel weights -> vision_model, q/k/v fused in that order."""
    clip, prefix = _submodule(model, "vision_model")
    folder, hf = _hf_folder(path, "CLIP")
    hf = {**_CLIP_DEFAULTS, **hf}
    dim = clip.embeddings.class_embedding.shape[0]
    layer = clip.transformer.layers[0]
    c = {"dim": dim, "depth": len(clip.transformer.layers), "heads": layer.self_attn.heads,
         "mlp_dim": layer.mlp.fc1.out_features, "pos_grid": clip.embeddings.pos_grid,
         "patch_size": clip.embeddings.patch_embedding.kernel_size[0]}
    _check_hf_config(folder / "config.json", [
        ("hidden_size", hf["hidden_size"], "clip.dim", c["dim"]),
        ("num_hidden_layers", hf["num_hidden_layers"], "clip.depth", c["depth"]),
        ("num_attention_heads", hf["num_attention_heads"], "clip.heads", c["heads"]),
        ("intermediate_size", hf["intermediate_size"], "clip.mlp_dim", c["mlp_dim"]),
        ("patch_size", hf["patch_size"], "clip.patch_size", c["patch_size"]),
        ("image_size // patch_size", hf["image_size"] // hf["patch_size"], "clip.pos_grid", c["pos_grid"]),
        ("hidden_act", hf["hidden_act"], "our CLIP activation", "quick_gelu"),
        ("layer_norm_eps", hf["layer_norm_eps"], "our CLIP LayerNorm eps", 1e-5),
        ("num_channels", hf["num_channels"], "our CLIP input channels", 3)])
    tensors, source = _read_hf_weights(folder)
    # CLIPModel (and CLIPVisionModel before transformers 5) save under vision_model.; v5 CLIPVisionModel: bare
    pre = "vision_model." if any(k.startswith("vision_model.") for k in tensors) else ""
    plan = {}
    for k in clip.state_dict():
        m = re.match(r"transformer\.layers\.(\d+)\.self_attn\.qkv_proj\.(weight|bias)$", k)
        if m:
            i, w = m.groups()
            plan[k] = [f"{pre}encoder.layers.{i}.self_attn.{x}_proj.{w}" for x in "qkv"]
        else:
            plan[k] = [pre + re.sub(r"^transformer\.", "encoder.", k)]

    def ignore(k):
        if k.startswith(("text_model.", "text_projection.", "visual_projection.")) or k == "logit_scale":
            return "CLIP text tower and projections (not part of DeepEncoder)"
        if k.startswith(pre + "post_layernorm."):
            return "post_layernorm (DeepEncoder uses every token before it)"
        if k == pre + "embeddings.position_ids":
            return "position_ids buffer (an arange, rebuilt from the config)"
        return None

    return _load_mapped(clip.state_dict(), plan, tensors, source, ignore, (), prefix)


# ----------------------------------------------------------------------------------------------
# nanochat


def _nanochat_files(folder, step=None):
    """(model_NNNNNN.pt, meta_NNNNNN.json, step); looks further down (e.g. base_checkpoints/d20) if needed."""
    root = resolve_dir(folder, "nanochat checkpoint folder", ["*model_*.pt", "*meta_*.json"])
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder; expected a nanochat checkpoint folder with "
                                f"model_NNNNNN.pt and meta_NNNNNN.json")
    dirs = sorted({p.parent for p in root.rglob("model_*.pt") if re.fullmatch(r"model_\d+\.pt", p.name)})
    if not dirs:
        raise FileNotFoundError(f"{root}: no model_NNNNNN.pt inside (expected a nanochat checkpoint folder)")
    if len(dirs) > 1:
        raise ValueError(f"{root}: several nanochat checkpoint folders inside ({', '.join(map(str, dirs))}); "
                         f"pass one of them")
    d = dirs[0]
    steps = sorted(int(p.name[6:-3]) for p in d.glob("model_*.pt") if re.fullmatch(r"model_\d+\.pt", p.name))
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise FileNotFoundError(f"{d}: no model_{step:06d}.pt (steps there: {steps})")
    return d / f"model_{step:06d}.pt", d / f"meta_{step:06d}.json", step


def _nanochat_meta(meta_path):
    """(meta, model_config, format): 2026 when the config has window_pattern, else 2025."""
    meta = read_json(meta_path, "nanochat metadata")
    mc = meta.get("model_config") if isinstance(meta, dict) else None
    if not isinstance(mc, dict):
        raise CheckpointError(f"{meta_path}: no model_config")
    version = 2026 if "window_pattern" in mc else 2025
    keys = NANOCHAT_KEYS_BY_FORMAT[version]
    unknown, missing = set(mc) - set(keys), set(keys) - set(mc)
    if unknown or missing:
        raise CheckpointError(f"{meta_path}: model_config has unknown {sorted(unknown)} / missing "
                              f"{sorted(missing)} fields: not nanochat's 2025 or 2026 format as this importer "
                              f"knows them (2025: {', '.join(NANOCHAT_CONFIG_KEYS)}; 2026 adds window_pattern)")
    return meta, mc, version


def _nanochat_state(model_path):
    sd = _torch_load(model_path)
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise CheckpointError(f"{model_path}: expected a state dict of tensors")
    return {k.removeprefix("_orig_mod."): v for k, v in sd.items()}  # saved after torch.compile


def _file_rows(sd, mc, model_path):
    """Rows of the file's vocab tables: the real vocab, or (since 2025-12) padded up to a multiple of 64."""
    wte = sd.get("transformer.wte.weight")
    real = mc["vocab_size"]
    rows = wte.shape[0] if wte is not None else real
    if rows not in (real, -(-real // 64) * 64):
        raise CheckpointError(f"{model_path}: transformer.wte.weight has {rows} rows but the meta's vocab_size "
                              f"is {real} (expected {real}, or padded to {-(-real // 64) * 64})")
    return rows


def nanochat_config(folder, step=None):
    """The GPTConfig of a nanochat checkpoint: its format and dimensions, vocab_size = its real vocab."""
    model_path, meta_path, step = _nanochat_files(folder, step)
    _, mc, version = _nanochat_meta(meta_path)
    _file_rows(_nanochat_state(model_path), mc, model_path)
    return GPTConfig(**mc, version=version)


@torch.no_grad()
def load_nanochat(model_or_gpt, folder, step=None):
    """nanochat base/mid/sft weights (either format) -> our GPT, which must have the checkpoint's format,
    dimensions and (2026) window layout. The checkpoint's real vocab lands in rows [0, vocab_size) bit-exact;
    a bigger vocab on our side (our special tokens) gets fresh rows after it; the file's padding rows are
    dropped, so a special token never inherits an untrained padding row."""
    gpt = model_or_gpt.gpt if isinstance(model_or_gpt, NanoDeepseekOCR) else model_or_gpt
    prefix = "gpt." if gpt is not model_or_gpt else ""
    model_path, meta_path, step = _nanochat_files(folder, step)
    _, mc, version = _nanochat_meta(meta_path)
    c = gpt.config
    checks = [("format", version, "gpt.version", c.version)]
    checks += [(k, mc[k], f"gpt.{k}", getattr(c, k)) for k in ("n_layer", "n_head", "n_kv_head", "n_embd")]
    if version >= 2026:  # the window sizes derive from both
        checks += [(k, mc[k], f"gpt.{k}", getattr(c, k)) for k in ("sequence_len", "window_pattern")]
    _check_hf_config(meta_path, checks)
    sd = _nanochat_state(model_path)
    rows, real, target = _file_rows(sd, mc, model_path), mc["vocab_size"], c.vocab_size
    if real > target:
        raise CheckpointError(f"{model_path}: {real} vocab rows, more than our decoder's {target}")
    # load into tables shaped as the file's, then cut to the real vocab and grow to ours
    old = {name: t for name, t in gpt.vocab_tables().items()}, c.vocab_size
    for name, t in old[0].items():
        w = t.weight
        if isinstance(t, nn.Linear):
            gpt._set_table(name, nn.Linear(w.shape[1], rows, bias=False, device=w.device, dtype=w.dtype))
        else:
            gpt._set_table(name, nn.Embedding(rows, w.shape[1], device=w.device, dtype=w.dtype))
    plan = {k: [k] for k in gpt.state_dict()}
    try:
        report = _load_mapped(gpt.state_dict(), plan, sd, model_path, prefix=prefix)
    except CheckpointError as e:
        for name, t in old[0].items():
            gpt._set_table(name, t)
        c.vocab_size = old[1]
        if version >= 2026 and any(k not in sd for k in plan):
            raise CheckpointError(f"{e} (a nanochat from between 2026-01 and 2026-04 has windows but not yet "
                                  f"all of smear/backout/value embeddings: only the format of 92d63d4 loads)") \
                from None
        raise
    c.vocab_size = real
    gpt.resize_vocab(target, keep=real)
    new_rows = table_rows(c)
    if new_rows > real:
        report.fresh += [f"{prefix}{name}.weight[{real}:{new_rows}]" for name in gpt.vocab_tables()]
    notes = [f"nanochat {version} format, step {step}"]
    if rows > real:
        report.ignored[f"padding rows [{real}:{rows}] past the real vocab (never trained)"] = \
            [f"{name}.weight" for name in gpt.vocab_tables()]
    if target > real:
        notes.append(f"vocab grown {real} -> {target}; the checkpoint's rows are unchanged")
    if new_rows > target:
        notes.append(f"rows [{target}:{new_rows}] pad the tables to a multiple of 64 and are never scored")
    if version < 2026 and mc["sequence_len"] != c.sequence_len:
        notes.append(f"nanochat trained at sequence_len {mc['sequence_len']}; ours is {c.sequence_len}")
    report.notes += notes
    return report


def save_nanochat(gpt, folder, step, meta=None):
    """Write model_NNNNNN.pt (a plain state dict) + meta_NNNNNN.json the way nanochat does."""
    gpt = gpt.gpt if isinstance(gpt, NanoDeepseekOCR) else gpt
    folder = Path(folder)
    c = gpt.config
    with atomic_path(folder / f"model_{step:06d}.pt") as tmp:
        torch.save({k: v.detach().cpu().contiguous() for k, v in gpt.state_dict().items()}, tmp)
    keys = NANOCHAT_KEYS_BY_FORMAT[c.version]
    doc = {"step": step, "model_config": {k: getattr(c, k) for k in keys}, **(meta or {})}
    atomic_write_json(folder / f"meta_{step:06d}.json", doc)
    return folder


# ----------------------------------------------------------------------------------------------
# DeepSeek-OCR release

_DS_VISION = ("sam_model.", "vision_model.", "projector.")
_DS_SPECIAL = {"image_newline": "image_newline", "view_seperator": "view_separator"}  # sic: release spelling


def _release_name(ours):
    return "model." + ("view_seperator" if ours == "view_separator" else ours)


def _vision_state(model):
    return {k: v for k, v in model.state_dict().items() if part_of(k) != "gpt"}


def _safetensors_files(path):
    path = resolve_dir(path, "DeepSeek-OCR folder", ["*.json", "*.safetensors"])
    if path.is_file():
        return [path], str(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder; expected the DeepSeek-OCR release (safetensors "
                                f"shards, optionally model.safetensors.index.json)")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return [path / f for f in read_weight_map(index)], str(index)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors files (expected the DeepSeek-OCR release)")
    return files, str(path)


def load_deepseek_ocr(model, path):
    """DeepEncoder + projector + image_newline/view_separator from the DeepSeek-OCR release (keys with or
    without `model.`). The language model is skipped key by key: only the vision tensors are read."""
    from safetensors import safe_open

    files, source = _safetensors_files(path)
    tensors, lm = {}, defaultdict(list)
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():
                    k = key.removeprefix("model.")
                    if k.startswith(_DS_VISION) or k in _DS_SPECIAL:
                        tensors[_DS_SPECIAL.get(k, k)] = st.get_tensor(key)
                    else:  # grouped by the name under model.: layers, embed_tokens, norm, (lm_head)
                        lm[key.split(".")[1] if key.startswith("model.") else key.split(".")[0]].append(key)
        except FileNotFoundError:
            raise FileNotFoundError(f"{f}: shard listed in {source} is missing") from None
        except Exception as e:
            raise CheckpointError(f"{f}: not a readable safetensors file (truncated or corrupt?): {e}") \
                from None
    plan = {k: [k] for k in _vision_state(model)}

    def ignore(k):
        return "CLIP position_ids buffer" if k == "vision_model.embeddings.position_ids" else None

    report = _load_mapped(_vision_state(model), plan, tensors, source, ignore)
    if lm:
        groups = ", ".join(f"{g} {len(keys)}" for g, keys in sorted(lm.items()))
        keys = sorted(k for group in lm.values() for k in group)
        report.ignored[f"language model (the 3B MoE decoder, unused: {groups})"] = keys
        report.notes.append("the language-model tensors were skipped without being read")
    return report


def export_deepseek_ocr(model, path, max_shard_bytes=None):
    """Write the vision part in the release layout (model. prefix, view_seperator spelling), as shards plus
    model.safetensors.index.json. The language model is not ours to write."""
    path = Path(path)
    state = {_release_name(k): v for k, v in _vision_state(model).items()}
    shards, cur, size = [], {}, 0
    for k, v in state.items():
        n = v.numel() * v.element_size()
        if cur and max_shard_bytes and size + n > max_shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[k] = v
        size += n
    shards.append(cur)
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(path / name, shard, {"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(v.numel() * v.element_size() for v in state.values())
    atomic_write_json(path / "model.safetensors.index.json", {"metadata": {"total_size": total},
                                                              "weight_map": weight_map})
    return path


# ----------------------------------------------------------------------------------------------
# import-weights: assemble a model folder


def _load_tokenizer(tokenizer):
    if tokenizer is None or hasattr(tokenizer, "vocab_size"):
        return tokenizer
    path = resolve_dir(tokenizer, "tokenizer folder")
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such tokenizer folder (expected tokenizer.json or nanochat's "
                                f"tokenizer.pkl)")
    return Tokenizer.from_directory(str(path))


def import_weights(out, preset="deepseek-d20", sam=None, clip=None, nanochat=None, deepseek_ocr=None,
                   tokenizer=None, seed=0, verbose=True):
    """Build the model from `preset`, load the given parts, save it with save_model into `out`.

    Decoder: a nanochat folder sets the format, window_pattern ("L" in 2025) and n_layer/n_head/n_kv_head/
    n_embd from its meta, whatever the preset says (2026:
    sequence_len and window_pattern too, the windows derive from them). Vocab: the tokenizer's size (and
    its <|image|> id) when given. Without a tokenizer, nanochat's real vocab plus RESERVED_SPECIAL_TOKENS
    ids for our special tokens (image_token_id stays unset until a tokenizer is attached), or the preset's
    vocab_size without nanochat. Returns a dict report."""
    if deepseek_ocr is not None and (sam is not None or clip is not None):
        raise ValueError("give the DeepSeek-OCR release or SAM/CLIP weights, not both (the same parts)")
    cfg = copy.deepcopy(preset) if isinstance(preset, OCRConfig) else get_preset(preset)
    tok = _load_tokenizer(tokenizer)
    notes = []
    if nanochat is not None:
        nc = nanochat_config(nanochat)  # vocab_size: the real vocab, padding rows not counted
        keys = ["version", "window_pattern", "n_layer", "n_head", "n_kv_head", "n_embd"]
        keys += ["sequence_len", "window_pattern"] if nc.version >= 2026 else []
        for k in keys:
            setattr(cfg.gpt, k, getattr(nc, k))
        if tok is not None:
            if tok.vocab_size < nc.vocab_size:
                raise ValueError(f"the tokenizer has {tok.vocab_size} tokens, fewer than the nanochat "
                                 f"checkpoint's {nc.vocab_size}: it is not that checkpoint's tokenizer plus ours")
            cfg.gpt.vocab_size = tok.vocab_size
        else:
            cfg.gpt.vocab_size = nc.vocab_size + RESERVED_SPECIAL_TOKENS
            notes.append(f"no tokenizer: reserved {RESERVED_SPECIAL_TOKENS} rows after nanochat's "
                         f"{nc.vocab_size} tokens for our special tokens; image_token_id unset (pass a tokenizer)")
    elif tok is not None:
        cfg.gpt.vocab_size = tok.vocab_size
    else:
        notes.append(f"no tokenizer: vocab_size {cfg.gpt.vocab_size} from the preset; image_token_id unset")
    cfg.validate()
    model = build_model(cfg, tok, seed)
    reports = []
    if deepseek_ocr is not None:
        reports.append(load_deepseek_ocr(model, deepseek_ocr))
    if sam is not None:
        reports.append(load_hf_sam(model, sam))
    if clip is not None:
        reports.append(load_hf_clip(model, clip))
    if nanochat is not None:
        reports.append(load_nanochat(model, nanochat))
    loaded = {k for r in reports for k in r.loaded}
    fresh_rows = [f for r in reports for f in r.fresh if "[" in f]  # e.g. grown vocab rows
    parts = {}
    for part in PARTS:
        names = [n for n, _ in model.named_parameters() if part_of(n) == part]
        n = sum(k in loaded for k in names)
        parts[part] = ("loaded" if n == len(names) else "fresh" if n == 0
                       else f"partly loaded ({n}/{len(names)} tensors)")
        rows = [f for f in fresh_rows if part_of(f.split("[")[0]) == part]
        if rows:
            parts[part] += f", fresh rows {', '.join(rows)}"
    sources = {k: str(v) for k, v in dict(sam=sam, clip=clip, nanochat=nanochat, deepseek_ocr=deepseek_ocr,
                                          tokenizer=tokenizer).items() if v is not None}
    summary = {"out": str(out), "preset": preset if isinstance(preset, str) else "custom", "sources": sources,
               "parts": parts, "params": model.param_counts(), "vocab_size": cfg.gpt.vocab_size,
               "image_token_id": model.image_token_id, "reports": reports, "notes": notes}
    save_model(model, out, tok, meta={"imported": {k: v for k, v in summary.items() if k != "reports"}})
    if verbose:
        print(format_summary(summary))
    return summary


def format_summary(s):
    lines = [str(r) for r in s["reports"]]
    lines.append(f"model -> {s['out']} (preset {s['preset']}, vocab {s['vocab_size']}, "
                 f"image_token_id {s['image_token_id']})")
    for part, status in s["parts"].items():
        lines.append(f"  {part:10s} {s['params'][part] / 1e6:9.3f}M  {status}")
    lines.append(f"  {'total':10s} {sum(s['params'].values()) / 1e6:9.3f}M")
    lines += [f"note: {n}" for n in s["notes"]]
    return "\n".join(lines)


def add_args(parser):
    parser.add_argument("--out", required=True, help="model folder to write (config.json, model.safetensors)")
    parser.add_argument("--preset", default="deepseek-d20", help="model size: deepseek-d20, deepseek-d20-2026, cpu "
                        "or tiny (a nanochat checkpoint sets the decoder's format and sizes)")
    parser.add_argument("--sam", help="transformers SAM folder, or hf:facebook/sam-vit-base to fetch it")
    parser.add_argument("--clip", help="transformers CLIP folder, or hf:openai/clip-vit-large-patch14")
    parser.add_argument("--nanochat", help="nanochat checkpoint folder (model_NNNNNN.pt + meta_NNNNNN.json)")
    parser.add_argument("--deepseek-ocr", help="DeepSeek-OCR release folder: DeepEncoder + projector only")
    parser.add_argument("--tokenizer", help="tokenizer folder (our tokenizer.json, nanochat's tokenizer.pkl)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the parts that are newly initialised")


def main(args):
    try:
        import_weights(args.out, args.preset, sam=args.sam, clip=args.clip, nanochat=args.nanochat,
                       deepseek_ocr=args.deepseek_ocr, tokenizer=args.tokenizer, seed=args.seed)
    except (CheckpointError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"import-weights: error: {e}", file=sys.stderr)
        return 1
    return 0
