"""
Model configurations. The full DeepSeek-OCR/d20 model and the small CPU models are the same code
with different numbers: every preset keeps the topology (SAM ViT with windowed + global blocks,
neck, two stride-2 convs, a CLIP trunk fed by the SAM map, a linear projector, a nanochat GPT).
"""

import copy
import math
from dataclasses import asdict, dataclass, field, fields

# Upper bounds that catch typos and hostile configs before they become a 40 GB allocation; far above any
# real model. An int field is at least 1 (at least 0 where its default is 0: an "off" switch).
INT_CAP = 1 << 16
INT_CAPS = {"vocab_size": 1 << 21, "sequence_len": 1 << 17}
MAX_VIEW = 4096  # px, the side of the largest view (sizes)


@dataclass
class SamConfig:
    patch_size: int = 16
    pos_grid: int = 64  # side of the pretrained absolute position grid (1024 / 16)
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    window_size: int = 14
    global_blocks: tuple = (2, 5, 8, 11)
    neck_dim: int = 256
    net2_dim: int = 512
    out_dim: int = 1024  # net_3 channels; must equal the CLIP width (the map becomes CLIP's patch embeddings)
    # Options for a vision path trained from scratch (the defaults are DeepSeek's exact topology, so pretrained
    # SAM / DeepSeek-OCR weights load by name). SAM's pixels-to-compressor path is linear except inside its
    # transformer blocks; a pretrained SAM supplies glyph features there, random blocks do not.
    stem: str = "patch"  # "patch": one patch_size conv (SAM); "conv": 3x3 stride-2 conv + norm + ReLU layers
    compressor_act: bool = False  # norm + ReLU after net_2 and after net_3 (DeepSeek: two plain convs)


@dataclass
class ClipConfig:
    dim: int = 1024
    depth: int = 24
    heads: int = 16
    mlp_dim: int = 4096
    pos_grid: int = 16  # 224 / 14: the learned position grid (plus one CLS position)
    patch_size: int = 14  # only the ordinary pixel path uses it


@dataclass
class GPTConfig:
    sequence_len: int = 2048
    vocab_size: int = 65542  # nanochat's 65536 + our 6 special tokens (<|image|>, grounding tokens)
    n_layer: int = 20
    n_head: int = 16
    n_kv_head: int = 16
    n_embd: int = 1280
    # nanochat's checkpoint format: 2025, or 2026 (sliding windows, value embeddings, resid/x0 lambdas,
    # smear, backout; tables padded to a multiple of 64, vocab_size stays the real vocabulary)
    version: int = 2025
    window_pattern: str = "L"  # 2026: S (short) / L (long) windows tiled over the layers, the last one L


@dataclass
class OCRConfig:
    sam: SamConfig = field(default_factory=SamConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    gpt: GPTConfig = field(default_factory=GPTConfig)
    # view side per mode; gundam uses `small` for its local crops and `base` for its global view
    sizes: dict = field(default_factory=lambda: {"tiny": 512, "small": 640, "base": 1024, "large": 1280})
    min_crops: int = 2
    max_crops: int = 6

    def to_dict(self):
        d = asdict(self)
        d["sam"]["global_blocks"] = list(d["sam"]["global_blocks"])
        return d

    @classmethod
    def from_dict(cls, d):
        d = copy.deepcopy(d)
        parts = {"sam": SamConfig, "clip": ClipConfig, "gpt": GPTConfig}
        kw = {}
        for key, value in d.items():
            if key in parts:
                known = {f.name for f in fields(parts[key])}
                unknown = set(value) - known
                if unknown:
                    raise ValueError(f"config.{key}: unknown field(s) {sorted(unknown)}")
                if "global_blocks" in value:
                    value["global_blocks"] = tuple(value["global_blocks"])
                kw[key] = parts[key](**value)
            elif key in {f.name for f in fields(cls)}:
                kw[key] = value
            else:
                raise ValueError(f"config: unknown field {key!r}")
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    def validate(self):
        for part in ("sam", "clip", "gpt"):
            _check_fields(getattr(self, part), f"config.{part}")
        _check_fields(self, "config", skip=("sam", "clip", "gpt", "sizes"))
        s, c, g = self.sam, self.clip, self.gpt
        if not isinstance(self.sizes, dict):
            raise ValueError(f"config.sizes must be an object, got {type(self.sizes).__name__}")
        for mode, side in self.sizes.items():
            if not _is_int(side) or not s.patch_size <= side <= MAX_VIEW or side % s.patch_size:
                raise ValueError(f"config.sizes.{mode}: {side!r}; need a multiple of sam.patch_size "
                                 f"({s.patch_size}) up to {MAX_VIEW}")
        if s.out_dim != c.dim:
            raise ValueError(f"config: sam.out_dim ({s.out_dim}) must equal clip.dim ({c.dim})")
        if s.dim % s.heads or c.dim % c.heads or g.n_embd % g.n_head:
            raise ValueError("config: every width must be divisible by its number of heads")
        if g.n_head % g.n_kv_head:
            raise ValueError(f"config: gpt.n_head ({g.n_head}) must be a multiple of n_kv_head ({g.n_kv_head})")
        if g.version not in (2025, 2026):
            raise ValueError(f"config: gpt.version must be 2025 or 2026 (nanochat's formats), not {g.version}")
        if not g.window_pattern or set(g.window_pattern.upper()) - set("SL"):
            raise ValueError(f"config: gpt.window_pattern {g.window_pattern!r} must be letters S and L")
        if g.version == 2025 and g.window_pattern != "L":
            raise ValueError("config: sliding windows (gpt.window_pattern) are part of the 2026 format only")
        if any(b >= s.depth for b in s.global_blocks):
            raise ValueError(f"config: sam.global_blocks {s.global_blocks} outside depth {s.depth}")
        if s.stem not in ("patch", "conv"):
            raise ValueError(f"config: sam.stem must be 'patch' or 'conv', got {s.stem!r}")
        if s.stem == "conv" and (s.patch_size < 2 or s.patch_size & (s.patch_size - 1)):
            raise ValueError(f"config: sam.stem 'conv' needs a power-of-two patch_size, got {s.patch_size}")
        if set(self.sizes) != {"tiny", "small", "base", "large"}:
            raise ValueError(f"config: sizes must name tiny, small, base, large; got {sorted(self.sizes)}")
        if not 1 <= self.min_crops <= self.max_crops <= 9:
            raise ValueError("config: need 1 <= min_crops <= max_crops <= 9")
        side = max(self.sizes.values())
        tokens = math.ceil(side // s.patch_size / 4) ** 2  # the largest view's vision tokens (image.grid_side)
        if tokens >= g.sequence_len:
            raise ValueError(f"config.sizes: a {side} px view is {tokens} vision tokens, which do not fit in "
                             f"gpt.sequence_len {g.sequence_len}: every page would fail")
        return self


ZERO_OK = {"config.sam.depth"}  # a SAM without transformer blocks: the conv stem and neck alone (cpu preset)


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _check_fields(obj, where, skip=()):
    """Type and range of every field of a config dataclass, by its declared type, so new fields are covered
    too: ints in [1 (or 0 when the default is 0), cap], finite floats >= 0, bools, strings, tuples of ints."""
    for f in fields(obj):
        if f.name in skip:
            continue
        v, name = getattr(obj, f.name), f"{where}.{f.name}"
        if f.type is bool:
            ok, want = isinstance(v, bool), "true or false"
        elif f.type is int:
            lo, hi = (0 if f.default == 0 or name in ZERO_OK else 1), INT_CAPS.get(f.name, INT_CAP)
            ok, want = _is_int(v) and lo <= v <= hi, f"an integer from {lo} to {hi}"
        elif f.type is float:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
            ok, want = ok and (v > 0 or f.default == 0), "a finite number > 0" if f.default != 0 else ">= 0"
        elif f.type is str:
            ok, want = isinstance(v, str), "a string"
        elif f.type is tuple:
            ok = isinstance(v, (tuple, list)) and all(_is_int(x) and 0 <= x <= INT_CAP for x in v)
            want = "a list of integers >= 0"
        else:
            continue
        if not ok:
            raise ValueError(f"{name}: {v!r} is not {want}")


def _deepseek_d20():
    return OCRConfig()


def _deepseek_d20_2026():
    # The same model on a nanochat trained since spring 2026: d20 is 1280 wide in 10 heads of 128, with
    # the 32768-token tokenizer (+ our 6 special tokens) and the default SSSL window pattern
    return OCRConfig(gpt=GPTConfig(vocab_size=32768 + 6, n_head=10, n_kv_head=10, version=2026,
                                   window_pattern="SSSL"))


def _cpu():
    """A model that learns to read from scratch on a 2-core CPU. Same pipeline, with the from-scratch options the
    glyph probe (dev/glyph_probe.py, dev/LOG.md) justified; accuracy after 100-150 steps on its digit task, chance
    10 %:
      - stem="conv": SAM's single patch conv is a linear map of each patch, and random transformer blocks do not
        supply glyph features at this budget (the old cpu preset: 10 % = chance after 300 steps). Two 3x3
        stride-2 convs with a per-channel norm + ReLU take their place (with the compressor below: 48 %).
      - compressor_act: a per-channel norm + ReLU after net_2 and net_3 (plain convs: 12 %). LayerNorm over
        channels here stays at chance, GroupNorm learns at half speed (sam.conv_norm).
      - depth=0: no SAM transformer blocks. At patch 4 a 256 px view is a 64x64 map; two windowed blocks there
        cost 0.35 s of a 0.8 s training step, and the probe learns without them.
      - patch 4: a vision token covers 16x16 px of a 256 px view, ~1.5-2 characters of 14-20 px text (at patch 8
        it was 4-5, which no variant learned to separate).
    """
    return OCRConfig(
        sam=SamConfig(patch_size=4, pos_grid=64, dim=96, depth=0, heads=3, window_size=8, global_blocks=(),
                      neck_dim=64, net2_dim=96, out_dim=128, stem="conv", compressor_act=True),
        clip=ClipConfig(dim=128, depth=2, heads=4, mlp_dim=512, pos_grid=16, patch_size=32),
        gpt=GPTConfig(sequence_len=768, vocab_size=1024, n_layer=4, n_head=4, n_kv_head=4, n_embd=256),
        sizes={"tiny": 128, "small": 160, "base": 256, "large": 320},
    )


def _tiny():
    # For tests: every mechanism present (padded windows, global blocks, GQA, several grid sizes), seconds on CPU.
    return OCRConfig(
        sam=SamConfig(patch_size=8, pos_grid=8, dim=32, depth=2, heads=2, window_size=4, global_blocks=(1,),
                      neck_dim=16, net2_dim=24, out_dim=32),
        clip=ClipConfig(dim=32, depth=2, heads=2, mlp_dim=64, pos_grid=2, patch_size=32),
        gpt=GPTConfig(sequence_len=256, vocab_size=300, n_layer=2, n_head=4, n_kv_head=2, n_embd=64),
        sizes={"tiny": 32, "small": 40, "base": 64, "large": 80},
    )


PRESETS = {"deepseek-d20": _deepseek_d20, "deepseek-d20-2026": _deepseek_d20_2026, "cpu": _cpu, "tiny": _tiny}


def apply_overrides(cfg, assignments):
    """cfg with "part.field=value" strings applied (e.g. "sam.stem=conv", "gpt.n_layer=6"), validated."""
    cfg = copy.deepcopy(cfg)
    for a in assignments:
        key, eq, value = a.partition("=")
        part, _, name = key.partition(".")
        if part == "sizes" and name in cfg.sizes:
            cfg.sizes[name] = int(value)
            continue
        obj = getattr(cfg, part, None)
        if not eq or obj is None or part not in ("sam", "clip", "gpt") or name not in obj.__dataclass_fields__:
            raise ValueError(f"config override {a!r}: expected PART.FIELD=VALUE with PART sam, clip, gpt or sizes")
        cur = getattr(obj, name)
        if isinstance(cur, bool):
            val = value.lower() in ("1", "true", "yes")
        elif isinstance(cur, tuple):
            val = tuple(int(v) for v in value.split(",") if v)
        else:
            val = type(cur)(value)
        setattr(obj, name, val)
    return cfg.validate()


def get_preset(name, **gpt_overrides):
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    cfg = PRESETS[name]()
    for k, v in gpt_overrides.items():
        setattr(cfg.gpt, k, v)
    return cfg.validate()
