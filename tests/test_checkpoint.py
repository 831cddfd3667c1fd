"""Our formats: model folder, training state, DeepEncoder handoff. Round trips are exact, writes are atomic,
and every bad input is an error that names the file, the key and the shapes."""

import json
import random
import shutil

import numpy as np
import pytest
import torch
from conftest import byte_tokenizer, tiny_model
from PIL import Image
from safetensors.torch import load_file, save_file

from nanoocr import checkpoint as ck
from nanoocr import fileio
from nanoocr.checkpoint import CheckpointError
from nanoocr.image import collate_views, make_views
from nanoocr.model import NanoDeepseekOCR
from nanoocr.presets import get_preset

IMG = 7


def tiny(seed=0, **gpt):
    return tiny_model(seed, IMG, **gpt)


def batch(cfg):
    from nanoocr.image import num_image_tokens
    n = num_image_tokens(90, 50, "base", cfg)
    idx = torch.randint(10, 200, (2, n + 5))
    idx[0, 2:2 + n] = IMG
    return idx, collate_views([make_views(Image.effect_noise((90, 50), 50).convert("RGB"), "base", cfg)])


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# ----------------------------------------------------------------------------------------------
# model folder


def test_model_roundtrip_exact(tmp_path):
    m = tiny().eval()
    idx, views = batch(m.config)
    with torch.no_grad():
        want = m(idx, views=views)
    out = ck.save_model(m, tmp_path / "m", meta={"phase": "test", "step": 3})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name != "m"]  # no temp folders left behind
    m2, tok, meta = ck.load_model(out)
    assert tok is None and meta == {"phase": "test", "step": 3} and m2.image_token_id == IMG
    assert m2.config == m.config
    with torch.no_grad():
        assert torch.equal(m2.eval()(idx, views=views), want)
    assert not m2.vision_model.embeddings.patch_embedding.weight.requires_grad  # module's flag kept
    assert all(not b.is_meta for b in m2.buffers())

    m3, _, _ = ck.load_model(out, dtype=torch.bfloat16)
    assert m3.gpt.lm_head.weight.dtype == torch.bfloat16 and m3.gpt.cos.dtype == torch.float32
    assert torch.equal(m3.gpt.lm_head.weight, m.gpt.lm_head.weight.to(torch.bfloat16))

    # saving again replaces the folder as a whole
    other = tiny(seed=5)
    ck.save_model(other, out)
    m4, _, meta = ck.load_model(out)
    assert meta == {} and torch.equal(m4.view_separator, other.view_separator)
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "precious.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a model folder"):
        ck.save_model(m, tmp_path / "notamodel")


def test_save_model_crash_keeps_previous(tmp_path, monkeypatch):
    m = tiny()
    ck.save_model(m, tmp_path / "m")

    def boom(tensors, path, metadata=None):
        open(path, "wb").write(b"partial")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(fileio, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        ck.save_model(tiny(seed=9), tmp_path / "m")
    monkeypatch.undo()
    m2, _, _ = ck.load_model(tmp_path / "m")
    assert torch.equal(m2.view_separator, m.view_separator)
    assert [p.name for p in tmp_path.iterdir()] == ["m"] and len(list((tmp_path / "m").iterdir())) == 2


def test_model_bad_inputs(tmp_path, monkeypatch):
    m = tiny()
    d = ck.save_model(m, tmp_path / "m")
    f, cfg_path = d / "model.safetensors", d / "config.json"
    good, good_cfg = f.read_bytes(), cfg_path.read_text()

    f.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(CheckpointError, match=r"m/model\.safetensors: not a readable safetensors file"):
        ck.load_model(d)
    f.write_bytes(good)

    sd = load_file(f)
    save_file({k: v for k, v in sd.items() if k != "gpt.lm_head.weight"}, f)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing 1 key\(s\): gpt\.lm_head\.w"):
        ck.load_model(d)
    save_file({**sd, "gpt.extra.weight": torch.zeros(2)}, f)
    with pytest.raises(CheckpointError, match=r"unexpected 1 key\(s\): gpt\.extra\.weight"):
        ck.load_model(d)
    save_file({**sd, "image_newline": torch.zeros(65)}, f)
    with pytest.raises(CheckpointError, match=r"image_newline: shape \(65,\) in the file but \(64,\) in the"):
        ck.load_model(d)
    f.write_bytes(good)

    doc = json.loads(good_cfg)
    doc["config"]["gpt"]["n_embd"] = 32  # config.json says another width than the weights
    cfg_path.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"gpt\.lm_head\.weight: shape \(300, 64\) in the file but "
                                              r"\(300, 32\) in the model"):
        ck.load_model(d)
    doc["config"]["gpt"]["n_embdd"] = 32
    cfg_path.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"config\.json: bad model config.*n_embdd"):
        ck.load_model(d)
    cfg_path.write_text(good_cfg[:40])
    with pytest.raises(CheckpointError, match=r"config\.json: corrupt model config"):
        ck.load_model(d)
    cfg_path.write_text(json.dumps({**json.loads(good_cfg), "format": "something-else"}))
    with pytest.raises(CheckpointError, match=r"format is 'something-else'"):
        ck.load_model(d)
    cfg_path.unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json: missing; expected a model folder"):
        ck.load_model(d)
    with pytest.raises(FileNotFoundError, match=r"nowhere: no such folder; expected a model folder with"):
        ck.load_model(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"Pass a local folder"):
        ck.load_model("hf:someorg/somemodel")  # a repo id, and the hub is offline
    monkeypatch.setitem(__import__("sys").modules, "huggingface_hub", None)
    with pytest.raises(FileNotFoundError, match=r"huggingface_hub is not installed.*Pass a local folder"):
        ck.load_model("hf:someorg/somemodel")


def test_model_roundtrip_with_tokenizer(tmp_path):
    tokmod = pytest.importorskip("nanoocr.tokenizer")
    tok = tokmod.Tokenizer.train(iter(["hello world, a tiny corpus for a tiny tokenizer. 12345"] * 50), 300)
    m = tiny(vocab_size=tok.vocab_size)
    m.image_token_id = tok.image_id
    d = ck.save_model(m, tmp_path / "m", tokenizer=tok)
    assert (d / "tokenizer.json").is_file()
    m2, tok2, _ = ck.load_model(d)
    assert tok2.vocab_size == tok.vocab_size and tok2.image_id == tok.image_id == m2.image_token_id
    m.image_token_id = tok.image_id + 1
    with pytest.raises(ValueError, match="image_token_id"):
        ck.save_model(m, tmp_path / "m2", tokenizer=tok)


def test_repo_id_goes_through_huggingface_hub(tmp_path, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants
    d = ck.save_model(tiny(), tmp_path / "m")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the download itself is faked below
    calls = []
    monkeypatch.setattr(hub, "snapshot_download", lambda repo, **kw: calls.append(repo) or str(d))
    assert ck.load_model("hf:someorg/mymodel")[0].image_token_id == IMG and calls == ["someorg/mymodel"]

    def fail(repo, **kw):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(hub, "snapshot_download", fail)
    with pytest.raises(FileNotFoundError, match=r"hf:someorg/mymodel: fetching the model folder.*no route to "
                                                r"host.*Pass a local folder"):
        ck.load_model("hf:someorg/mymodel")


def test_model_tokenizer_plumbing(tmp_path):
    m = tiny()
    m.image_token_id = None
    d = ck.save_model(m, tmp_path / "m", tokenizer=byte_tokenizer(290, 288))
    m2, tok, _ = ck.load_model(d)
    assert (tok.vocab_size, tok.image_id, m2.image_token_id) == (290, 288, 288)  # id from the tokenizer
    with pytest.raises(ValueError, match="tokenizer has 301 tokens but the decoder only 300"):
        ck.save_model(m, tmp_path / "m", tokenizer=byte_tokenizer(301, 288))
    byte_tokenizer(290, 280).save(d)
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: <\|image\|> is id 280 but .*token_id 288"):
        ck.load_model(d)


# ----------------------------------------------------------------------------------------------
# atomic helpers


def test_atomic_writes(tmp_path, monkeypatch):
    p = tmp_path / "sub" / "x.json"
    fileio.atomic_write_json(p, {"a": 1})
    assert json.loads(p.read_text()) == {"a": 1}

    def fail(*a):
        raise OSError("disk full")

    t = torch.arange(12.0)
    fileio.write_safetensors(tmp_path / "t.safetensors", {"a": t, "b": t, "c": t.view(3, 4).t(), "d": t[2:5]})
    back, _ = fileio.read_safetensors(tmp_path / "t.safetensors")  # shared and strided tensors are written
    assert torch.equal(back["b"], t) and torch.equal(back["c"], t.view(3, 4).t())
    assert back["d"].tolist() == [2, 3, 4]

    monkeypatch.setattr(fileio.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        fileio.atomic_write_bytes(p, b"new")
    assert json.loads(p.read_text()) == {"a": 1} and [q.name for q in p.parent.iterdir()] == ["x.json"]


# ----------------------------------------------------------------------------------------------
# training state


def _train_steps(model, opt, n, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        idx = torch.randint(0, 300, (2, 12), generator=g)
        model(idx, targets=idx).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def _optimizer(model):
    # two groups, as the trainer builds them (decayed matrices, undecayed rest)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                             lr=1e-3, betas=(0.9, 0.95))


def test_training_state_roundtrip_exact(tmp_path):
    m = tiny()
    opt = _optimizer(m)
    _train_steps(m, opt, 2, seed=0)
    extra = {"rng": ck.rng_state(), "skips": {"by_reason": {"x": 1}}}
    d = ck.save_training_state(tmp_path / "ckpt", 2, m, opt, extra)
    assert d.name == "step_000002" and ck.has_training_state(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "latest.json").read_text()) == {"step": 2, "dir": "step_000002"}

    m2 = tiny(seed=1)
    opt2 = _optimizer(m2)
    _train_steps(m2, opt2, 1, seed=3)  # some other state to overwrite
    step, extra2 = ck.load_training_state(tmp_path / "ckpt", m2, opt2)
    assert step == 2 and extra2 == extra
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        for name, v in a["state"][i].items():
            assert torch.equal(v, b["state"][i][name]) and v.dtype == b["state"][i][name].dtype, (i, name)
    assert isinstance(opt2.param_groups[0]["betas"], tuple)
    # and training continues identically
    _train_steps(m, opt, 1, seed=7)
    _train_steps(m2, opt2, 1, seed=7)
    for (k, v), v2 in zip(m.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(v, v2), k
    # a step folder can be given directly
    assert ck.load_training_state(d, tiny(seed=2))[0] == 2


def test_training_state_crash_prune_and_errors(tmp_path, monkeypatch):
    m = tiny()
    opt = _optimizer(m)
    root = tmp_path / "ckpt"
    for step in (1, 2, 3):
        ck.save_training_state(root, step, m, opt, {"s": step})
    assert sorted(p.name for p in root.iterdir()) == ["latest.json", "step_000002", "step_000003"]

    real = ck.write_safetensors

    def crash(path, tensors, metadata=None):
        if path.name == "model.safetensors":
            path.write_bytes(b"half a file")
            raise KeyboardInterrupt
        return real(path, tensors, metadata)

    monkeypatch.setattr(ck, "write_safetensors", crash)
    with pytest.raises(KeyboardInterrupt):
        ck.save_training_state(root, 4, m, opt, {"s": 4})
    monkeypatch.undo()
    assert ck.load_training_state(root, m, opt) == (3, {"s": 3})  # the crash left the last good one
    ck.save_training_state(root, 5, m, opt, {"s": 5})
    assert sorted(p.name for p in root.iterdir()) == ["latest.json", "step_000003", "step_000005"]

    # a different freeze policy: other parameters in the optimizer
    for p in m.sam_model.parameters():
        p.requires_grad_(False)
    with pytest.raises(CheckpointError, match="different freeze policy"):
        ck.load_training_state(root, m, _optimizer(m))
    with pytest.raises(TypeError, match="JSON"):
        ck.save_training_state(root, 6, m, opt, {"bad": object()})
    assert ck.load_training_state(root, m)[0] == 5
    (root / "latest.json").write_text(json.dumps({"step": 9, "dir": "step_000009"}))
    assert ck.load_training_state(root, m)[0] == 5  # a dangling pointer: the newest complete step folder
    for d in root.glob("step_*"):
        shutil.rmtree(d)
    with pytest.raises(CheckpointError, match="latest.json: points at 'step_000009'"):
        ck.load_training_state(root, m)
    assert not ck.has_training_state(root) and not ck.has_training_state(tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="no training checkpoint"):
        ck.load_training_state(tmp_path / "none", m)


def test_rng_state_roundtrip():
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    state = json.loads(json.dumps(ck.rng_state()))  # survives JSON
    draws = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    random.random(), np.random.rand(5), torch.rand(5)
    ck.set_rng_state(state)
    assert (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()) == draws


# ----------------------------------------------------------------------------------------------
# DeepEncoder handoff


def test_deepencoder_handoff(tmp_path):
    a = tiny(seed=0).eval()
    path = ck.save_deepencoder(a, tmp_path / "deepencoder.safetensors")
    keys = load_file(path).keys()
    assert "sam_model.net_3.weight" in keys and "view_separator" in keys and "projector.layers.bias" in keys
    assert not any(k.startswith("gpt.") for k in keys)
    b = tiny(seed=1).eval()
    gpt_before = {k: v.clone() for k, v in b.gpt.state_dict().items()}
    ck.load_deepencoder(b, path)
    _, views = batch(a.config)
    with torch.no_grad():
        assert all(torch.equal(x, y) for x, y in zip(a.encode_images(views), b.encode_images(views)))
    assert all(torch.equal(v, b.gpt.state_dict()[k]) for k, v in gpt_before.items())

    c = NanoDeepseekOCR(get_preset("tiny", n_embd=32))  # another decoder width: the projector cannot fit
    with pytest.raises(CheckpointError, match=r"projector\.layers\.weight: shape \(64, 64\) in the file but "
                                              r"\(32, 64\) in the model"):
        ck.load_deepencoder(c, path)
    cfg = get_preset("tiny")
    cfg.sam.window_size = 2
    with pytest.raises(CheckpointError, match=r"sam config differs.*window_size"):
        ck.load_deepencoder(NanoDeepseekOCR(cfg), path)
    sd, meta = ck.read_safetensors(path)
    del sd["sam_model.net_2.weight"]
    ck.write_safetensors(path, sd, meta)
    with pytest.raises(CheckpointError, match=r"deepencoder\.safetensors: missing 1 key.*sam_model\.net_2"):
        ck.load_deepencoder(b, path)
