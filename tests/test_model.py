import random

import pytest
import torch
from conftest import tiny_model
from PIL import Image

from nanoocr import gpt as gpt_mod
from nanoocr import sam as sam_mod
from nanoocr.image import MODES, ViewBatch, choose_tiles, collate_views, make_views, num_image_tokens
from nanoocr.model import NanoDeepseekOCR
from nanoocr.presets import OCRConfig, get_preset

IMG = 7  # <|image|> id for these tests


@pytest.fixture(scope="module")
def model():
    return tiny_model(0, IMG).eval()


def test_d20_parameter_counts():
    with torch.device("meta"):
        m = NanoDeepseekOCR(get_preset("deepseek-d20"))
    c = {k: v / 1e6 for k, v in m.param_counts().items()}
    assert 94 < c["sam"] + c["compressor"] < 97  # ~96M with net_2/net_3
    assert 302 < c["clip"] < 304
    assert 2.6 < c["projector"] < 2.7
    assert 560 < c["gpt"] < 562


def test_reference_token_counts():
    cfg = get_preset("deepseek-d20")  # REFERENCE.md's table
    assert [num_image_tokens(800, 1000, m, cfg) for m in ("tiny", "small", "base", "large")] == [73, 111, 273, 421]
    assert num_image_tokens(600, 600, "gundam", cfg) == 273  # fits one crop: global view only
    w, h = choose_tiles(1920, 1080, 640, 2, 6)
    assert (w, h) == (2, 1)
    assert num_image_tokens(1920, 1080, "gundam", cfg) == (h * 10) * (w * 10 + 1) + 273


@pytest.mark.parametrize("mode", MODES)
def test_token_count_matches_model(model, mode):
    rng = random.Random(mode)
    sizes = [(rng.randint(8, 400), rng.randint(8, 400)) for _ in range(12)] + [(300, 20), (20, 300), (64, 64)]
    views = [make_views(Image.new("RGB", s, (200, 30, 30)), mode, model.config) for s in sizes]
    with torch.no_grad():
        out = model.encode_images(collate_views(views))
    for (w, h), o in zip(sizes, out):
        assert o.shape == (num_image_tokens(w, h, mode, model.config), model.config.gpt.n_embd), (w, h)


def test_choose_tiles_rules():
    for w in range(50, 2000, 97):
        for h in range(50, 2000, 89):
            tw, th = choose_tiles(w, h, 640, 2, 9)
            assert (tw, th) == (1, 1) if (w <= 640 and h <= 640) else 2 <= tw * th <= 9


def test_mixed_batch_and_placeholder_mismatch(model):
    cfg = model.config
    n = num_image_tokens(50, 30, "base", cfg)
    idx = torch.randint(10, 200, (2, n + 6))
    idx[0, 1:1 + n] = IMG  # row 0 has the image, row 1 is text only
    views = collate_views([make_views(Image.new("RGB", (50, 30)), "base", cfg)])
    logits = model(idx, views=views)
    assert logits.shape == (2, n + 6, cfg.gpt.vocab_size)
    text_only = model(idx[1:])
    assert torch.allclose(logits[1:], text_only, atol=1e-5)  # the image does not leak into other rows
    idx[0, 1] = 11
    with pytest.raises(ValueError, match=rf"{n - 1} <\|image\|> placeholders.*{n} vision tokens"):
        model(idx, views=views)


def test_bad_view_shape(model):
    bad = ViewBatch(torch.zeros(1, 3, 50, 50), torch.zeros(0, 3, 40, 40), [(1, 1)])
    with pytest.raises(ValueError, match=r"\(1, 3, 50, 50\)"):
        model.encode_images(bad)


def test_rel_pos_bias_and_fold_agree(model, monkeypatch):
    x = torch.randn(2, 3, 80, 80)  # 10x10 patches: windows of 4 need padding, global block resizes rel_pos
    out = {}
    for impl in ("bias", "fold"):
        monkeypatch.setattr(sam_mod, "REL_POS_IMPL", impl)
        with torch.no_grad():
            out[impl] = model.sam_model(x)
    assert (out["bias"] - out["fold"]).abs().max() < 1e-5


def test_gqa_fallback_matches(model, monkeypatch):
    idx = torch.randint(0, 300, (2, 12))
    with torch.no_grad():
        a = model.gpt(idx)
        monkeypatch.setattr(gpt_mod, "_SDPA_GQA", False)
        b = model.gpt(idx)
    assert (a - b).abs().max() < 1e-5


def test_frozen_encoder_runs_without_autograd(model):
    for p in model.parameters():
        p.requires_grad_(False)
    model.projector.layers.weight.requires_grad_(True)
    x = torch.randn(1, 3, 64, 64)
    seen = []
    h = model.vision_model.register_forward_hook(lambda m, i, o: seen.append(o.requires_grad))
    y = model.encode_views(x)
    h.remove()
    assert seen == [False] and y.requires_grad
    for p in model.parameters():
        p.requires_grad_(True)


def test_config_roundtrip_and_validation():
    cfg = get_preset("tiny")
    assert OCRConfig.from_dict(cfg.to_dict()) == cfg
    d = cfg.to_dict()
    d["clip"]["dim"] = 48
    with pytest.raises(ValueError, match="sam.out_dim"):
        OCRConfig.from_dict(d)
    d = cfg.to_dict()
    d["gpt"]["n_layers"] = 3
    with pytest.raises(ValueError, match="n_layers"):
        OCRConfig.from_dict(d)


def test_attention_nll_is_the_heads_real_attention():
    """gpt.attention_nll scores the same weights SDPA uses: with the identity as values, SDPA returns them."""
    torch.manual_seed(0)
    B, T, d = 2, 9, 8
    q, k = torch.randn(B, T, d), torch.randn(B, T, d)
    weights = torch.nn.functional.scaled_dot_product_attention(q, k, torch.eye(T).expand(B, T, T), is_causal=True)
    target = torch.randint(0, T, (B, T))
    target = torch.minimum(target, torch.arange(T))  # causal: a key at or before the query
    target[0, 3] = -1
    expect = -weights.gather(-1, target.clamp(min=0)[..., None])[..., 0].log()[target >= 0].sum()
    assert torch.allclose(gpt_mod.attention_nll(q, k, None, target), expect, atol=1e-5)
