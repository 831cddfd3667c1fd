"""nanochat's 2026 decoder format (karpathy/nanochat 92d63d4): a checkpoint folder written the way nanochat
writes one is imported strictly, and our logits are checked against a float64 re-implementation of
nanochat's published forward written here from its definitions (not our module): sliding windows,
value embeddings, resid/x0 lambdas, smear, backout, q/k x1.2, rotary base 1e5, padded vocab. Then the KV
cache across the window edges, batched left-padded generation with images, and the vision-position rule."""

import argparse
import json
import math
import random

import pytest
import torch
from conftest import tiny_model
from PIL import Image

from nanoocr import weights as W
from nanoocr.checkpoint import CheckpointError, load_model
from nanoocr.engine import Engine
from nanoocr.gpt import GPT, KVCache
from nanoocr.image import collate_views, make_views, num_image_tokens
from nanoocr.model import NanoDeepseekOCR
from nanoocr.presets import GPTConfig, get_preset

TOL = 1e-4
# 4 layers, SSSL: windows 128, 128, 128, 256 (a quarter of 256 rounded up to 128; the last layer is L);
# value embeddings on layers 1 and 3; backout after layer 2; vocab 200 padded to 256 rows
NC = dict(sequence_len=256, vocab_size=200, n_layer=4, n_head=4, n_kv_head=2, n_embd=32, window_pattern="SSSL")
T_LONG = 300  # past both window sizes


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------
# nanochat's side: the checkpoint as it writes one, and its forward from the published definitions


def nanochat_state(mc, seed=0):
    """The state dict nanochat 92d63d4 saves (orig_model.state_dict(): no _orig_mod. prefix): fp32 master
    weights, wte and value embeddings in bf16 (GPU runs cast them to the compute dtype), vocab rows padded
    to 64. Random values big enough that every mechanism moves the logits."""
    g = torch.Generator().manual_seed(seed)
    L, H, KV, C = mc["n_layer"], mc["n_head"], mc["n_kv_head"], mc["n_embd"]
    D, P = C // H, -(-mc["vocab_size"] // 64) * 64
    rnd = lambda *shape, std=1.0: std * torch.randn(*shape, generator=g)
    sd = {"transformer.wte.weight": rnd(P, C).bfloat16()}
    for i in range(L):
        p = f"transformer.h.{i}."
        sd[p + "attn.c_q.weight"] = rnd(H * D, C, std=C ** -0.5)
        sd[p + "attn.c_k.weight"] = rnd(KV * D, C, std=C ** -0.5)
        sd[p + "attn.c_v.weight"] = rnd(KV * D, C, std=C ** -0.5)
        sd[p + "attn.c_proj.weight"] = rnd(C, C, std=0.5 * C ** -0.5)
        if i % 2 == (L - 1) % 2:
            sd[p + "attn.ve_gate.weight"] = rnd(KV, 12, std=0.5)
        sd[p + "mlp.c_fc.weight"] = rnd(4 * C, C, std=C ** -0.5)
        sd[p + "mlp.c_proj.weight"] = rnd(C, 4 * C, std=0.5 * (4 * C) ** -0.5)
    sd["lm_head.weight"] = rnd(P, C, std=0.5)
    sd["resid_lambdas"] = 1.0 + rnd(L, std=0.1)
    sd["x0_lambdas"] = 0.2 + rnd(L, std=0.1)
    sd["smear_gate.weight"] = rnd(1, 24, std=0.5)
    sd["smear_lambda"] = torch.tensor([0.6])
    sd["backout_lambda"] = torch.tensor([0.3])
    for i in range(L):
        if i % 2 == (L - 1) % 2:
            sd[f"value_embeds.{i}.weight"] = rnd(P, KV * D).bfloat16()
    return sd


def write_nanochat(folder, mc, step=700, seed=0, sd=None):
    """model_NNNNNN.pt + meta_NNNNNN.json (+ an optimizer shard) as nanochat's base_train saves them."""
    folder.mkdir(parents=True, exist_ok=True)
    sd = nanochat_state(mc, seed) if sd is None else sd
    torch.save(sd, folder / f"model_{step:06d}.pt")
    meta = {"step": step, "val_bpb": 3.21, "model_config": dict(mc),
            "user_config": {"depth": mc["n_layer"], "window_pattern": mc["window_pattern"]},
            "device_batch_size": 32, "max_seq_len": mc["sequence_len"], "total_batch_size": 524288,
            "dataloader_state_dict": {"pq_idx": 0, "rg_idx": 3},
            "loop_state": {"min_val_bpb": 3.2, "smooth_train_loss": 3.3, "total_training_time": 12.5}}
    (folder / f"meta_{step:06d}.json").write_text(json.dumps(meta, indent=2))
    (folder / f"optim_{step:06d}_rank0.pt").write_bytes(b"optimizer shard: never read")
    return sd


def reference_logits(sd, mc, idx, embeds=None, windows=True):
    """nanochat 92d63d4's GPT.forward in float64, from its definitions. With `embeds`, the input vectors
    at positions where idx is -1 (our extension, as documented in nanoocr/gpt.py): no value embedding
    there and no smear into or out of them."""
    f = {k: v.double() for k, v in sd.items()}
    L, H, KV, C = mc["n_layer"], mc["n_head"], mc["n_kv_head"], mc["n_embd"]
    D, (B, T) = C // H, idx.shape
    eps = torch.finfo(torch.float32).eps  # F.rms_norm's default at nanochat's fp32 compute dtype
    rms = lambda x: x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    long = mc["sequence_len"]
    short = math.ceil(long / 4 / 128) * 128
    win = [long if mc["window_pattern"][i % len(mc["window_pattern"])] == "L" else short for i in range(L)]
    win[-1] = long
    inv_freq = 1.0 / 100000 ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq  # (T, D/2)
    cos, sin = ang.cos()[None, :, None], ang.sin()[None, :, None]

    def rope(x):  # rotates by -theta, halves paired
        a, b = x[..., :D // 2], x[..., D // 2:]
        return torch.cat([a * cos + b * sin, -a * sin + b * cos], -1)

    tok = idx >= 0
    ids = idx.clamp(min=0)
    x = f["transformer.wte.weight"][ids] if embeds is None else embeds.double()
    x = rms(x)
    xt = x * tok[..., None]
    gate = f["smear_lambda"] * torch.sigmoid(x[:, 1:, :24] @ f["smear_gate.weight"].T)
    x = torch.cat([x[:, :1], x[:, 1:] + gate * (tok[:, 1:, None] * xt[:, :-1])], 1)
    x0, xb = x, None
    t = torch.arange(T)
    for i in range(L):
        p = f"transformer.h.{i}."
        x = f["resid_lambdas"][i] * x + f["x0_lambdas"][i] * x0
        h = rms(x)
        q = (h @ f[p + "attn.c_q.weight"].T).view(B, T, H, D)
        k = (h @ f[p + "attn.c_k.weight"].T).view(B, T, KV, D)
        v = (h @ f[p + "attn.c_v.weight"].T).view(B, T, KV, D)
        if p + "attn.ve_gate.weight" in f:
            ve = (f[f"value_embeds.{i}.weight"][ids] * tok[..., None]).view(B, T, KV, D)
            v = v + 3 * torch.sigmoid(h[..., :12] @ f[p + "attn.ve_gate.weight"].T)[..., None] * ve
        q, k = 1.2 * rms(rope(q)), 1.2 * rms(rope(k))
        k, v = k.repeat_interleave(H // KV, 2), v.repeat_interleave(H // KV, 2)  # query head j uses kv j // rep
        att = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(D)
        ok = t[None, :] <= t[:, None]
        if windows:  # window W: W keys before the query, plus itself
            ok = ok & (t[None, :] >= t[:, None] - win[i])
        att = att.masked_fill(~ok, float("-inf")).softmax(-1)
        y = torch.einsum("bhij,bjhd->bihd", att, v).reshape(B, T, C)
        x = x + y @ f[p + "attn.c_proj.weight"].T
        x = x + torch.relu(rms(x) @ f[p + "mlp.c_fc.weight"].T).square() @ f[p + "mlp.c_proj.weight"].T
        if i == L // 2:
            xb = x
    x = rms(x - f["backout_lambda"] * xb)
    logits = (x @ f["lm_head.weight"].T)[..., :mc["vocab_size"]]
    return 15 * torch.tanh(logits / 15)


def imported_gpt(folder, extra=6):
    cfg = W.nanochat_config(folder)
    cfg.vocab_size += extra
    gpt = GPT(cfg)
    gpt.init_weights()
    return gpt.eval(), W.load_nanochat(gpt, folder)


# ----------------------------------------------------------------------------------------------
# import + numerics


def test_import_matches_nanochat_definition(tmp_path):
    sd = write_nanochat(tmp_path / "d4", NC)
    gpt, report = imported_gpt(tmp_path / "d4")
    c = gpt.config
    assert (c.version, c.window_pattern, c.vocab_size) == (2026, "SSSL", 206)
    assert gpt.windows == [128, 128, 128, 256]
    assert len(report.loaded) == len(sd) and not any("[" in k for k in report.loaded)
    assert report.fresh == [f"{n}.weight[200:256]" for n in ("transformer.wte", "lm_head", "value_embeds.1",
                                                              "value_embeds.3")]
    assert any("padding rows [200:256]" in reason for reason in report.ignored)
    assert "nanochat 2026 format, step 700" in str(report)
    assert torch.equal(gpt.transformer.wte.weight[:200], sd["transformer.wte.weight"][:200].float())
    assert torch.equal(gpt.value_embeds["3"].weight[:200], sd["value_embeds.3.weight"][:200].float())

    idx = torch.randint(0, 200, (2, T_LONG), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = gpt(idx)
    assert ours.shape == (2, T_LONG, 206)  # the 50 padding rows are never scored
    want = reference_logits(sd, NC, idx)
    diff = (ours[..., :200].double() - want).abs()
    print(f"max |logit diff| vs the nanochat definition: {diff.max():.2e} "
          f"(positions >= 129: {diff[:, 129:].max():.2e}, >= 257: {diff[:, 257:].max():.2e})")
    assert diff.max() < TOL
    # the test can see the windows: without them the late positions differ by far more than TOL
    assert (reference_logits(sd, NC, idx, windows=False) - want)[:, 129:].abs().max() > 100 * TOL


def test_kv_cache_across_the_window_edges(tmp_path):
    write_nanochat(tmp_path / "d4", NC)
    gpt, _ = imported_gpt(tmp_path / "d4")
    idx = torch.randint(0, 200, (2, T_LONG), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = gpt(idx)
        for chunks in ([100] + [1] * 200, [120, 20, 1, 1, 60, 1, 98]):  # decode, and chunked prefill
            cache = KVCache(2, 4, 2, 8, T_LONG, "cpu", torch.float32)
            t0, outs = 0, []
            for n in chunks:
                outs.append(gpt(idx[:, t0:t0 + n], kv_cache=cache))
                t0 += n
            assert (torch.cat(outs, 1) - full).abs().max() < 1e-5


def test_import_weights_cli_and_reload(tmp_path, capsys):
    sd = write_nanochat(tmp_path / "base_checkpoints" / "d4", NC)
    args = ["--out", str(tmp_path / "model"), "--preset", "tiny", "--nanochat", str(tmp_path / "base_checkpoints")]
    p = argparse.ArgumentParser()
    W.add_args(p)
    assert W.main(p.parse_args(args)) == 0
    printed = capsys.readouterr().out
    assert "nanochat 2026 format" in printed and "padding rows [200:256]" in printed
    model, _, meta = load_model(tmp_path / "model")
    g = model.config.gpt
    assert (g.version, g.sequence_len, g.window_pattern, g.vocab_size, g.n_embd) == (2026, 256, "SSSL", 206, 32)
    assert meta["imported"]["parts"]["gpt"].startswith("loaded, fresh rows gpt.transformer.wte.weight[200:256]")
    idx = torch.randint(0, 200, (1, 140))
    with torch.no_grad():
        assert (model.gpt(idx)[..., :200].double() - reference_logits(sd, NC, idx)).abs().max() < TOL


def test_the_checkpoint_decides_the_format(tmp_path):
    # a 2025 nanochat under the 2026 preset gives a 2025 decoder, and the other way round
    W.save_nanochat(GPT(GPTConfig(sequence_len=64, vocab_size=250, n_layer=2, n_head=4, n_kv_head=2, n_embd=48)),
                    tmp_path / "nc25", step=1)
    write_nanochat(tmp_path / "nc26", NC)
    for preset, folder, want in ((get_preset("tiny", version=2026, window_pattern="SSSL"), "nc25", (2025, "L")),
                                 ("tiny", "nc26", (2026, "SSSL"))):
        s = W.import_weights(tmp_path / f"m-{folder}", preset, nanochat=tmp_path / folder, verbose=False)
        g = load_model(tmp_path / f"m-{folder}")[0].config.gpt
        assert (g.version, g.window_pattern) == want and s["parts"]["gpt"].startswith("loaded")


def test_strict_errors(tmp_path):
    sd = write_nanochat(tmp_path / "a", NC)
    with pytest.raises(CheckpointError, match=r"window_pattern is 'SSSL' but gpt\.window_pattern is 'SL'"):
        W.load_nanochat(GPT(GPTConfig(**{**NC, "window_pattern": "SL"}, version=2026)), tmp_path / "a")
    # an intermediate 2026 nanochat (windows, no smear/backout yet): named, and the model is left as it was
    old = {k: v for k, v in sd.items() if not k.startswith(("smear", "backout"))}
    write_nanochat(tmp_path / "b", NC, sd=old)
    gpt = GPT(W.nanochat_config(tmp_path / "a"))
    with pytest.raises(CheckpointError, match=r"missing 3 key.*backout_lambda.*only the format of 92d63d4"):
        W.load_nanochat(gpt, tmp_path / "b")
    assert gpt.transformer.wte.weight.shape == (256, 32)
    bad = dict(sd, **{"transformer.wte.weight": sd["transformer.wte.weight"][:230]})
    write_nanochat(tmp_path / "c", NC, sd=bad)
    with pytest.raises(CheckpointError, match=r"230 rows but the meta's vocab_size is 200 \(expected 200, or .*256"):
        W.load_nanochat(GPT(W.nanochat_config(tmp_path / "a")), tmp_path / "c")


def test_padded_2025_checkpoint_special_tokens_after_real_vocab(tmp_path):
    # nanochat pads the vocab to 64 since 2025-12 in the 2025 format too: the padding rows are not ours
    torch.manual_seed(0)
    src = GPT(GPTConfig(sequence_len=64, vocab_size=256, n_layer=2, n_head=4, n_kv_head=2, n_embd=48))
    src.init_weights()
    torch.nn.init.normal_(src.lm_head.weight, std=0.3)
    W.save_nanochat(src, tmp_path, step=3)
    meta = json.loads((tmp_path / "meta_000003.json").read_text())
    meta["model_config"]["vocab_size"] = 250  # rows 250..255 are padding
    (tmp_path / "meta_000003.json").write_text(json.dumps(meta))
    dst = GPT(GPTConfig(sequence_len=64, vocab_size=256, n_layer=2, n_head=4, n_kv_head=2, n_embd=48))
    dst.init_weights()
    report = W.load_nanochat(dst, tmp_path)
    assert report.fresh == ["transformer.wte.weight[250:256]", "lm_head.weight[250:256]"]
    assert torch.equal(dst.lm_head.weight[250:], torch.zeros(6, 48))  # fresh (2025 init), not the padding
    idx = torch.randint(0, 250, (1, 20))
    with torch.no_grad():
        assert torch.allclose(dst(idx)[..., :250], src(idx)[..., :250], rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# the full model: vision positions, batched generation, training


IMG = 7


@pytest.fixture(scope="module")
def model():
    m = tiny_model(0, head_std=0, n_layer=4, version=2026, window_pattern="SSSL")
    with torch.no_grad():  # nanochat's init zeroes projections and smear: make every mechanism visible
        for name, p in m.gpt.named_parameters():
            if name.endswith("c_proj.weight") or name == "lm_head.weight":
                torch.nn.init.normal_(p, std=0.3)
        m.gpt.smear_lambda.fill_(0.6)
        m.gpt.backout_lambda.fill_(0.3)
    m.image_token_id = IMG
    return m.eval()


def test_vision_positions_follow_the_documented_rule(model):
    # vision tokens in the middle of the text: no value embedding and no smear at or right after them
    gpt = model.gpt
    mc = {k: getattr(gpt.config, k) for k in NC}
    sd = {k: v.detach() for k, v in gpt.state_dict().items()}
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(10, 300, (2, 160), generator=g)
    idx[:, 5:25] = -1
    idx[1, 140:150] = -1
    embeds = gpt.transformer.wte(idx.clamp(min=0)).detach()
    embeds[idx < 0] = torch.randn(int((idx < 0).sum()), 64, generator=g)
    with torch.no_grad():
        ours = gpt(idx, embeds=embeds)
    want = reference_logits(sd, mc, idx, embeds)
    assert (ours[..., :mc["vocab_size"]].double() - want).abs().max() < TOL
    # and the rule is visible: treating those positions as token 0 (value embedding, smear) differs
    assert (reference_logits(sd, mc, idx.clamp(min=0), embeds) - want).abs().max() > 100 * TOL
    with pytest.raises(ValueError, match="needs the token ids"):
        gpt(embeds=embeds)


def make_row(cfg, seed, n_text, size=None, mode="base"):
    rng = random.Random(seed)
    text = [rng.randrange(10, 300) for _ in range(n_text)]
    if size is None:
        return text, None
    n = num_image_tokens(*size, mode, cfg)
    img = Image.effect_noise(size, 60 + seed).convert("RGB")
    return text[:2] + [IMG] * n + text[2:], make_views(img, mode, cfg)


def generate(engine, rows, **kw):
    views = collate_views([v for _, v in rows if v is not None])
    return engine.generate([p for p, _ in rows], views, max_new_tokens=30, banned_ids=[IMG], **kw)


def test_generation_batched_and_cached_across_windows(model):
    # prompts from 3 to 240 tokens, 30 new: rows cross the 128 window while decoding, one the 256 one
    cfg = model.config
    rows = [make_row(cfg, 1, 110), make_row(cfg, 2, 100, (50, 30), "base"), make_row(cfg, 3, 3),
            make_row(cfg, 4, 150, (100, 40), "gundam"), make_row(cfg, 5, 240)]
    engine = Engine(model)
    batched = generate(engine, rows)
    assert batched == [generate(engine, [r])[0] for r in rows]
    assert batched == generate(engine, rows, use_cache=False)
    assert len({tuple(o) for o in batched}) == len(rows)


def test_training_step_reaches_every_parameter(model):
    m = NanoDeepseekOCR(model.config).init_weights()
    m.image_token_id = IMG
    prompt, views = make_row(m.config, 1, 40, (50, 30), "base")
    idx = torch.tensor([prompt])
    targets = idx.roll(-1, 1).masked_fill(idx == IMG, -1)
    loss = m(idx, targets, views=collate_views([views]))
    loss.backward()
    gpt = m.gpt
    got = {n for n, p in gpt.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    # zero-init output projections leave only the head a gradient at step 0, as in nanochat; the head
    # and the 2026 scalars (through backout and the residual scales) must have one
    assert {"lm_head.weight", "backout_lambda", "resid_lambdas", "x0_lambdas"} <= got


def test_d20_2026_preset():
    with torch.device("meta"):
        m = NanoDeepseekOCR(get_preset("deepseek-d20-2026"))
    g = m.gpt
    assert g.windows == [512, 512, 512, 2048] * 5  # 2048 / 4 = 512 is already a multiple of 128
    assert g.transformer.wte.weight.shape == (32832, 1280) and g.config.vocab_size == 32774
    assert sorted(map(int, g.value_embeds)) == list(range(1, 20, 2))
    assert 897 < m.param_counts()["gpt"] / 1e6 < 898  # 420M of it value embeddings


def test_bf16_autocast_generation(model):
    # the CUDA default (a bf16 KV cache, fp32 value embeddings and smear memory), exercised on CPU
    cfg = model.config
    rows = [make_row(cfg, 1, 140), make_row(cfg, 2, 20, (50, 30), "base")]
    engine = Engine(model, autocast_dtype=torch.bfloat16)
    for use_cache in (True, False):
        out = generate(engine, rows, use_cache=use_cache)
        assert [len(o) for o in out] == [30, 30] and all(0 <= t < 300 and t != IMG for o in out for t in o)
