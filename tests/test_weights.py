"""Foreign weights: HF SAM/CLIP numerics against transformers, nanochat and DeepSeek-OCR layouts,
strict errors that name file/key/shape, and import-weights end to end. Tiny random models, no downloads."""

import argparse
import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")

from conftest import byte_tokenizer, tiny_model  # noqa: E402

from nanoocr import weights as W  # noqa: E402
from nanoocr.checkpoint import CheckpointError, load_model  # noqa: E402
from nanoocr.clip import ClipTrunk  # noqa: E402
from nanoocr.gpt import GPT  # noqa: E402
from nanoocr.image import collate_views, make_views  # noqa: E402
from nanoocr.model import NanoDeepseekOCR  # noqa: E402
from nanoocr.presets import ClipConfig, GPTConfig, SamConfig, get_preset  # noqa: E402
from nanoocr.sam import SamEncoder  # noqa: E402

TOL = 1e-4
SAM_A = get_preset("tiny").sam  # image 64, patch 8, window 4 + one global block
SAM_B = SamConfig(patch_size=8, pos_grid=10, dim=32, depth=3, heads=2, window_size=4, global_blocks=(1,),
                  neck_dim=16, net2_dim=24, out_dim=32)  # 10x10 patches: windows of 4 need padding
CLIP_A = get_preset("tiny").clip  # image 64, patch 32: 2x2 grid
CLIP_B = ClipConfig(dim=32, depth=2, heads=4, mlp_dim=48, pos_grid=4, patch_size=16)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never reach for the network, whatever a test passes


@torch.no_grad()
def _randomize(module, seed):
    # transformers inits SAM with std 1e-10: give every tensor visible values, or the comparison means little
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
        p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))


def hf_sam(folder, c, full=True, seed=0):
    vc = dict(hidden_size=c.dim, num_hidden_layers=c.depth, num_attention_heads=c.heads,
              patch_size=c.patch_size, image_size=c.pos_grid * c.patch_size, window_size=c.window_size,
              global_attn_indexes=list(c.global_blocks), output_channels=c.neck_dim,
              mlp_dim=int(c.dim * c.mlp_ratio))
    if full:
        m = transformers.SamModel(transformers.SamConfig(vision_config=vc))
    else:
        m = transformers.SamVisionModel(transformers.SamVisionConfig(**vc))
    _randomize(m, seed)
    m.save_pretrained(folder)
    return m.eval()


def hf_clip(folder, c, full=False, seed=0):
    vc = dict(hidden_size=c.dim, intermediate_size=c.mlp_dim, num_hidden_layers=c.depth,
              num_attention_heads=c.heads, image_size=c.pos_grid * c.patch_size, patch_size=c.patch_size)
    if full:
        tc = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  vocab_size=64, bos_token_id=0, eos_token_id=1, pad_token_id=1)
        cfg = transformers.CLIPConfig(vision_config=vc, text_config=tc, projection_dim=8)
        m = transformers.CLIPModel(cfg)
    else:
        m = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**vc))
    _randomize(m, seed)
    m.save_pretrained(folder)
    return m.eval()


def tiny_gpt(seed=0, **kw):
    torch.manual_seed(seed)
    base = dict(sequence_len=64, vocab_size=250, n_layer=2, n_head=4, n_kv_head=2, n_embd=48)
    cfg = GPTConfig(**{**base, **kw})
    gpt = GPT(cfg)
    gpt.init_weights()
    torch.nn.init.normal_(gpt.lm_head.weight, std=0.3)  # nanochat zero-inits the head: make logits differ
    return gpt.eval()


# ----------------------------------------------------------------------------------------------
# SAM and CLIP against transformers


@pytest.mark.parametrize("c,full", [(SAM_A, True), (SAM_B, False)],
                         ids=["SamModel-64px", "SamVisionModel-80px-padded"])
def test_hf_sam_matches_transformers(tmp_path, c, full):
    ref = hf_sam(tmp_path, c, full=full)
    ours = SamEncoder(c).eval()
    report = W.load_hf_sam(ours, tmp_path)
    x = torch.randn(2, 3, c.pos_grid * c.patch_size, c.pos_grid * c.patch_size)
    with torch.no_grad():
        want = ref.vision_encoder(pixel_values=x).last_hidden_state
        got = ours.trunk(x)
    diff = (got - want).abs().max().item()
    print(f"\nSAM {'SamModel' if full else 'SamVisionModel'} {x.shape[-1]}px: max abs diff {diff:.2e} "
          f"(output scale {want.abs().max().item():.2f})")
    assert got.shape == want.shape and diff <= TOL
    assert report.fresh == ["net_2.weight", "net_3.weight"]
    assert len(report.loaded) == len(ours.state_dict()) - 2
    if full:
        (reason, keys), = report.ignored.items()
        assert "prompt encoder" in reason and any(k.startswith("mask_decoder.") for k in keys)
    else:
        assert report.ignored == {}


@pytest.mark.parametrize("c,full", [(CLIP_A, False), (CLIP_B, True)], ids=["CLIPVisionModel", "CLIPModel"])
def test_hf_clip_matches_transformers(tmp_path, c, full):
    ref = hf_clip(tmp_path, c, full=full)
    if full:  # an older export also carries the position_ids buffer: documented, ignored
        f = tmp_path / "model.safetensors"
        sd = load_file(f)
        sd["vision_model.embeddings.position_ids"] = torch.arange(c.pos_grid ** 2 + 1)[None]
        save_file(sd, f)
    ours = ClipTrunk(c).eval()
    report = W.load_hf_clip(ours, tmp_path)
    x = torch.randn(2, 3, c.pos_grid * c.patch_size, c.pos_grid * c.patch_size)
    with torch.no_grad():
        want = (ref.vision_model(pixel_values=x) if full else ref(pixel_values=x)).last_hidden_state
        got = ours(pixels=x)
    diff = (got - want).abs().max().item()
    print(f"\nCLIP {'CLIPModel' if full else 'CLIPVisionModel'}: max abs diff {diff:.2e} "
          f"(output scale {want.abs().max().item():.2f})")
    assert got.shape == want.shape and diff <= TOL
    assert report.fresh == [] and len(report.loaded) == len(ours.state_dict())
    reasons = " | ".join(report.ignored)
    assert "post_layernorm" in reasons
    if full:
        assert "text tower" in reasons and "position_ids" in reasons


def test_hf_sam_bad_inputs(tmp_path):
    hf_sam(tmp_path, SAM_A, full=False)
    f = tmp_path / "model.safetensors"
    good = load_file(f)
    ours = SamEncoder(SAM_A)
    key = "vision_encoder.layers.0.attn.qkv.weight"

    sd = dict(good)
    del sd[key]
    save_file(sd, f)
    with pytest.raises(CheckpointError, match=rf"model\.safetensors.*missing 1 key.*{key}"):
        W.load_hf_sam(ours, tmp_path)

    save_file({**good, "vision_encoder.layers.0.attn.extra": torch.zeros(2)}, f)
    with pytest.raises(CheckpointError, match=r"unexpected 1 key.*vision_encoder\.layers\.0\.attn\.extra"):
        W.load_hf_sam(ours, tmp_path)

    save_file({**good, key: torch.zeros(90, 32)}, f)
    with pytest.raises(CheckpointError, match=rf"{key}: shape \(90, 32\) in the file but "
                                              r"blocks\.0\.attn\.qkv\.weight needs \(96, 32\)"):
        W.load_hf_sam(ours, tmp_path)

    save_file(good, f)
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        W.load_hf_sam(ours, tmp_path)

    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "hidden_size": 48, "window_size": 7}))
    with pytest.raises(CheckpointError, match=r"config\.json.*hidden_size is 48 but sam\.dim is 32.*window_"):
        W.load_hf_sam(ours, tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: corrupt"):
        W.load_hf_sam(ours, tmp_path)

    with pytest.raises(FileNotFoundError, match="no such folder"):
        W.load_hf_sam(ours, tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="Pass a local folder"):
        W.load_hf_sam(ours, "hf:facebook/sam-vit-base")  # a repo id; offline
    with pytest.raises(FileNotFoundError, match="no such folder"):
        W.load_hf_sam(ours, "facebook/sam-vit-base")  # only the hf: form is a repo id


def test_hf_clip_wrong_width(tmp_path):
    hf_clip(tmp_path, CLIP_A)
    with pytest.raises(CheckpointError, match=r"hidden_size is 32 but clip\.dim is 48.*intermediate_size"):
        W.load_hf_clip(ClipTrunk(ClipConfig(dim=48, depth=2, heads=2, mlp_dim=96, pos_grid=2, patch_size=32)),
                       tmp_path)


# ----------------------------------------------------------------------------------------------
# nanochat


def test_nanochat_roundtrip_prefix_and_vocab_growth(tmp_path):
    src = tiny_gpt(0)
    W.save_nanochat(src, tmp_path / "a", step=100)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["meta_000100.json", "model_000100.pt"]
    idx = torch.randint(0, 250, (2, 17))
    with torch.no_grad():
        want = src(idx)

    dst = tiny_gpt(1)
    report = W.load_nanochat(dst, tmp_path / "a")
    with torch.no_grad():
        assert torch.equal(dst(idx), want)
    assert report.fresh == [] and len(report.loaded) == len(src.state_dict())

    # a state dict saved after torch.compile; optimizer shards are not ours to read
    b = tmp_path / "b"
    W.save_nanochat(src, b, step=100)
    torch.save({"_orig_mod." + k: v for k, v in src.state_dict().items()}, b / "model_000200.pt")
    (b / "meta_000200.json").write_text((b / "meta_000100.json").read_text())
    (b / "optim_000200_rank0.pt").write_bytes(b"not even a torch file")
    dst = tiny_gpt(2)
    assert "step 200" in str(W.load_nanochat(dst, b))  # latest step by default
    with torch.no_grad():
        assert torch.equal(dst(idx), want)
    assert W.nanochat_config(b) == src.config

    # our vocab is bigger (special tokens): the checkpoint's rows stay bit-exact
    big = tiny_gpt(3, vocab_size=256)
    report = W.load_nanochat(big, tmp_path / "a")
    assert big.config.vocab_size == 256 and big.transformer.wte.weight.shape == (256, 48)
    assert torch.equal(big.transformer.wte.weight[:250], src.transformer.wte.weight)
    assert torch.equal(big.lm_head.weight[:250], src.lm_head.weight)
    assert big.transformer.wte.weight[250:].std() > 0.5  # fresh rows, not zeros or copies
    with torch.no_grad():  # a wider head may take another matmul kernel: equal to float rounding
        assert torch.allclose(big(idx)[..., :250], want, rtol=0, atol=1e-5)
    assert "transformer.wte.weight[250:256]" in report.fresh

    # into the full model: lands in model.gpt
    m = NanoDeepseekOCR(get_preset("tiny", n_layer=2, n_head=4, n_kv_head=2, n_embd=48, vocab_size=256))
    report = W.load_nanochat(m, tmp_path / "a", step=100)
    assert report.loaded[0].startswith("gpt.") and torch.equal(m.gpt.lm_head.weight[:250], src.lm_head.weight)


def test_nanochat_bad_inputs(tmp_path):
    src = tiny_gpt(0)
    W.save_nanochat(src, tmp_path, step=5)
    with pytest.raises(CheckpointError, match=r"meta_000005\.json.*n_embd is 48 but gpt\.n_embd is 64"):
        W.load_nanochat(tiny_gpt(n_embd=64), tmp_path)
    with pytest.raises(CheckpointError, match=r"250 vocab rows, more than our decoder's 200"):
        W.load_nanochat(tiny_gpt(vocab_size=200), tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no model_000007\.pt"):
        W.load_nanochat(tiny_gpt(), tmp_path, step=7)
    sd = src.state_dict()
    sd.pop("transformer.h.1.mlp.c_fc.weight")
    torch.save(sd, tmp_path / "model_000005.pt")
    dst = tiny_gpt(1, vocab_size=256)
    with pytest.raises(CheckpointError, match=r"model_000005\.pt: missing 1 key.*transformer\.h\.1\.mlp\.c_"):
        W.load_nanochat(dst, tmp_path)
    assert dst.config.vocab_size == 256 and dst.lm_head.weight.shape[0] == 256  # left as it was
    torch.save(src.state_dict(), tmp_path / "model_000005.pt")
    (tmp_path / "model_000005.pt").write_bytes((tmp_path / "model_000005.pt").read_bytes()[:500])
    with pytest.raises(CheckpointError, match=r"model_000005\.pt: not a readable torch state dict"):
        W.load_nanochat(tiny_gpt(), tmp_path)
    meta = json.loads((tmp_path / "meta_000005.json").read_text())
    meta["model_config"]["window_pattern"] = "SSSL"
    (tmp_path / "meta_000005.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"format is 2026 but gpt\.version is 2025"):  # into a 2025 GPT
        W.load_nanochat(tiny_gpt(), tmp_path)
    with pytest.raises(FileNotFoundError, match="expected a nanochat checkpoint folder"):
        W.load_nanochat(tiny_gpt(), tmp_path / "missing")


# ----------------------------------------------------------------------------------------------
# DeepSeek-OCR release layout


def _tiny_model(seed):
    return tiny_model(seed, head_std=0).eval()


def _views(cfg):
    images = [Image.new("RGB", (100, 60), (250, 240, 230)), Image.effect_noise((70, 90), 60).convert("RGB")]
    return collate_views([make_views(im, "gundam", cfg) for im in images]
                         + [make_views(im, "base", cfg) for im in images])


def test_deepseek_ocr_roundtrip(tmp_path):
    src = _tiny_model(0)
    out = W.export_deepseek_ocr(src, tmp_path / "ds", max_shard_bytes=40_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    keys = set(index["weight_map"])
    assert len(set(index["weight_map"].values())) > 1  # sharded
    assert {"model.view_seperator", "model.image_newline", "model.projector.layers.weight",
            "model.sam_model.neck.3.bias",
            "model.vision_model.transformer.layers.1.self_attn.qkv_proj.weight"} <= keys
    assert not any(k.startswith("model.gpt") or "view_separator" in k for k in keys)
    # the language model of the release sits in its own shard: ignored without being read
    lm = {"model.layers.0.mlp.experts.3.up_proj.weight": torch.zeros(4, 4), "model.embed_tokens.weight":
          torch.zeros(8, 4), "model.norm.weight": torch.zeros(4), "lm_head.weight": torch.zeros(8, 4),
          "model.vision_model.embeddings.position_ids": torch.arange(5)[None]}
    save_file(lm, out / "model-lm.safetensors")
    index["weight_map"].update(dict.fromkeys(lm, "model-lm.safetensors"))
    (out / "model.safetensors.index.json").write_text(json.dumps(index))

    dst = _tiny_model(1)
    gpt_before = {k: v.clone() for k, v in dst.gpt.state_dict().items()}
    report = W.load_deepseek_ocr(dst, out)
    views = _views(src.config)
    with torch.no_grad():
        for a, b in zip(src.encode_images(views), dst.encode_images(views)):
            assert torch.equal(a, b)
    assert all(torch.equal(v, dst.gpt.state_dict()[k]) for k, v in gpt_before.items())  # decoder untouched
    lm_reason = next(r for r in report.ignored if r.startswith("language model"))
    assert "layers 1" in lm_reason and "lm_head 1" in lm_reason and "embed_tokens 1" in lm_reason
    assert len(report.ignored[lm_reason]) == 4 and "ignored 4 keys: language model" in str(report)
    assert any("position_ids" in r for r in report.ignored)
    assert len(report.loaded) == len([k for k in src.state_dict() if not k.startswith("gpt.")])

    # the same keys without the model. prefix, one file, no index
    bare = {k.removeprefix("model."): v for s in sorted(set(index["weight_map"].values()))
            for k, v in load_file(out / s).items()}
    (tmp_path / "bare").mkdir()
    save_file(bare, tmp_path / "bare" / "weights.safetensors")
    dst = _tiny_model(2)
    W.load_deepseek_ocr(dst, tmp_path / "bare")
    assert torch.equal(dst.view_separator, src.view_separator)


def test_deepseek_ocr_bad_inputs(tmp_path):
    src = _tiny_model(0)
    out = W.export_deepseek_ocr(src, tmp_path / "ds")
    shard = out / "model-00001-of-00001.safetensors"
    sd = load_file(shard)
    save_file({**sd, "model.sam_model.blocks.7.attn.qkv.weight": torch.zeros(3)}, shard)
    with pytest.raises(CheckpointError, match=r"unexpected 1 key.*sam_model\.blocks\.7\.attn\.qkv\.weight"):
        W.load_deepseek_ocr(_tiny_model(1), out)
    save_file({**sd, "model.projector.layers.weight": torch.zeros(1280, 64)}, shard)  # 1280 wide, as released
    with pytest.raises(CheckpointError, match=r"projector\.layers\.weight: shape \(1280, 64\) in the file "
                                              r"but projector\.layers\.weight needs \(64, 64\)"):
        W.load_deepseek_ocr(_tiny_model(1), out)
    save_file(sd, shard)
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"model-00001-of-00001\.safetensors: not a readable"):
        W.load_deepseek_ocr(_tiny_model(1), out)
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=r"model-00001-of-00001\.safetensors.*missing"):
        W.load_deepseek_ocr(_tiny_model(1), out)


# ----------------------------------------------------------------------------------------------
# import-weights


def test_import_weights_end_to_end(tmp_path, capsys):
    hf_sam(tmp_path / "sam", SAM_A, full=True)
    hf_clip(tmp_path / "clip", CLIP_A, full=True)
    gpt = tiny_gpt(0, n_embd=48)  # narrower than the tiny preset's 64: nanochat's meta decides
    W.save_nanochat(gpt, tmp_path / "nanochat" / "d2", step=30)
    args = argparse.ArgumentParser()
    W.add_args(args)
    args = args.parse_args(["--out", str(tmp_path / "model"), "--preset", "tiny",
                            "--sam", str(tmp_path / "sam"), "--clip", str(tmp_path / "clip"),
                            "--nanochat", str(tmp_path / "nanochat")])
    assert W.main(args) == 0
    printed = capsys.readouterr().out
    assert "compressor" in printed and "fresh" in printed and "reserved 6 rows" in printed

    summary = W.import_weights(tmp_path / "model2", "tiny", sam=tmp_path / "sam", clip=tmp_path / "clip",
                               nanochat=tmp_path / "nanochat", verbose=False)
    assert summary["parts"] == {"sam": "loaded", "compressor": "fresh", "clip": "loaded",
                                "projector": "fresh", "gpt": "loaded, fresh rows gpt.transformer.wte.weight"
                                                             "[250:256], gpt.lm_head.weight[250:256]"}
    assert summary["vocab_size"] == 256 and summary["image_token_id"] is None
    assert summary["params"]["projector"] == (32 + 32) * 48 + 48 + 2 * 48
    model, tok, meta = load_model(tmp_path / "model")
    assert tok is None and meta["imported"]["parts"]["compressor"] == "fresh"
    assert model.config.gpt.n_embd == 48 and model.config.gpt.vocab_size == 256
    idx = torch.randint(0, 250, (1, 9))
    assert torch.equal(model.gpt.lm_head.weight[:250], gpt.lm_head.weight)
    with torch.no_grad():
        assert torch.allclose(model.gpt(idx)[..., :250], gpt(idx), rtol=0, atol=1e-5)
    ref = SamEncoder(SAM_A)
    W.load_hf_sam(ref, tmp_path / "sam")
    assert torch.equal(model.sam_model.blocks[1].attn.rel_pos_h, ref.blocks[1].attn.rel_pos_h)

    bad = argparse.Namespace(out=str(tmp_path / "m3"), preset="tiny", sam=str(tmp_path / "nope"), clip=None,
                             nanochat=None, deepseek_ocr=None, tokenizer=None, seed=0)
    assert W.main(bad) == 1
    assert "no such folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not both"):
        W.import_weights(tmp_path / "m4", "tiny", sam=tmp_path / "sam", deepseek_ocr=tmp_path / "ds")


def test_import_weights_deepseek_release(tmp_path):
    src = _tiny_model(0)
    W.export_deepseek_ocr(src, tmp_path / "ds")
    summary = W.import_weights(tmp_path / "model", "tiny", deepseek_ocr=tmp_path / "ds", verbose=False)
    assert summary["parts"] == {"sam": "loaded", "compressor": "loaded", "clip": "loaded",
                                "projector": "loaded", "gpt": "fresh"}
    model, _, _ = load_model(tmp_path / "model")
    views = _views(src.config)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(src.encode_images(views), model.encode_images(views)))


def test_import_weights_tokenizer_plumbing(tmp_path):
    (tmp_path / "tok").mkdir()
    byte_tokenizer(292, 285).save(tmp_path / "tok")
    W.save_nanochat(tiny_gpt(0, vocab_size=280), tmp_path / "nc", step=1)  # 280 rows
    summary = W.import_weights(tmp_path / "m", "tiny", nanochat=tmp_path / "nc", tokenizer=tmp_path / "tok",
                               verbose=False)
    assert summary["vocab_size"] == 292 and summary["image_token_id"] == 285
    model, tok, _ = load_model(tmp_path / "m")
    assert model.image_token_id == 285 and tok.vocab_size == 292 and model.config.gpt.vocab_size == 292
    byte_tokenizer(275, 273).save(tmp_path / "tok")
    with pytest.raises(ValueError, match="275 tokens, fewer than the nanochat checkpoint's 280"):
        W.import_weights(tmp_path / "m2", "tiny", nanochat=tmp_path / "nc", tokenizer=tmp_path / "tok")


def test_import_weights_with_tokenizer(tmp_path):
    tokmod = pytest.importorskip("nanoocr.tokenizer")
    texts = ["The quick brown fox jumps over the lazy dog. 0123456789"] * 50
    tok = tokmod.Tokenizer.train(iter(texts), 300)
    tok.save(str(tmp_path / "tok"))
    gpt = tiny_gpt(0, vocab_size=tok.vocab_size - 3)
    W.save_nanochat(gpt, tmp_path / "nc", step=1)
    summary = W.import_weights(tmp_path / "model", "tiny", nanochat=tmp_path / "nc",
                               tokenizer=tmp_path / "tok", verbose=False)
    assert summary["vocab_size"] == tok.vocab_size and summary["image_token_id"] == tok.image_id
    model, tok2, _ = load_model(tmp_path / "model")
    assert tok2.vocab_size == tok.vocab_size and model.image_token_id == tok.image_id
