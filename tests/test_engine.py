"""Generation engine: KV cache vs recomputation, batching vs one row at a time, stopping, banning,
sampling, the n-gram guard, encode-once and streaming, on the random-init tiny model."""

import random

import pytest
import torch
from conftest import tiny_model
from PIL import Image

from nanoocr.engine import Engine, ngram_ban_mask, sample
from nanoocr.image import collate_views, make_views, num_image_tokens

IMG = 7  # <|image|> id for these tests
N_NEW = 24


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    m = tiny_model(0, IMG, head_std=0.5)
    # nanochat zero-inits the output projections too: the outputs would not depend on context
    for name, p in m.gpt.named_parameters():
        if name.endswith("c_proj.weight"):
            torch.nn.init.normal_(p, std=0.2)
    return m.eval()


@pytest.fixture(scope="module")
def engine(model):
    return Engine(model)


def make_row(cfg, seed, n_text, size=None, mode="base"):
    """(prompt ids, ImageViews or None): a noise image's <|image|> run after two text ids."""
    rng = random.Random(seed)
    text = [rng.randrange(10, 300) for _ in range(n_text)]
    if size is None:
        return text, None
    img = Image.effect_noise(size, 60 + seed).convert("RGB")
    n = num_image_tokens(*size, mode, cfg)
    return text[:2] + [IMG] * n + text[2:], make_views(img, mode, cfg)


def run(engine, rows, **kw):
    kw = {"max_new_tokens": N_NEW, "banned_ids": [IMG], **kw}
    views = collate_views([v for _, v in rows if v is not None])
    return engine.generate([p for p, _ in rows], views, **kw)


def test_cache_matches_recompute_text(engine, model):
    rows = [make_row(model.config, s, n) for s, n in enumerate([1, 5, 17, 40])]
    for r in rows:
        assert run(engine, [r]) == run(engine, [r], use_cache=False)
    # padded batch: both paths carry the padding mask
    assert run(engine, rows) == run(engine, rows, use_cache=False)


@pytest.mark.parametrize("mode,size", [("tiny", (50, 30)), ("base", (30, 90)), ("gundam", (100, 40)),
                                       ("gundam", (50, 130)), ("gundam", (30, 30))])
def test_cache_matches_recompute_images(engine, model, mode, size):
    row = make_row(model.config, 1, 6, size, mode)
    out = run(engine, [row])
    assert len(out[0]) == N_NEW
    assert out == run(engine, [row], use_cache=False)


def mixed_rows(cfg):
    # different prompt lengths; text-only rows, base images, gundam with and without crops
    return [make_row(cfg, 1, 9), make_row(cfg, 2, 4, (50, 30), "base"),
            make_row(cfg, 3, 6, (100, 40), "gundam"), make_row(cfg, 4, 3),
            make_row(cfg, 5, 5, (20, 60), "gundam"), make_row(cfg, 6, 30)]


def test_batched_matches_one_by_one(engine, model):
    rows = mixed_rows(model.config)
    batched = run(engine, rows)
    assert batched == [run(engine, [r])[0] for r in rows]
    assert len({tuple(o) for o in batched}) == len(rows)  # the rows really differ


def test_per_row_stop(engine, model):
    rows = mixed_rows(model.config)
    full = run(engine, rows)
    # a stop id that row 0 produces early and some other row never produces
    stop = next(t for t in full[0][2:] if any(t not in o for o in full[1:]))
    out = run(engine, rows, stop_ids=[stop, 299])
    cut = lambda o: o[:o.index(stop)] if stop in o else o
    assert out == [cut(o) for o in full]
    assert len(out[0]) < N_NEW and any(len(o) == N_NEW for o in out)


def test_banned_ids_never_appear(engine, model):
    rows = mixed_rows(model.config)
    full = run(engine, rows)
    common = sorted({t for o in full for t in o[:6]})  # ids the model likes
    for kw in ({}, {"temperature": 1.5, "seed": 0}):
        out = run(engine, rows, banned_ids=[IMG] + common, **kw)
        assert all(len(o) == N_NEW for o in out)
        assert not {t for o in out for t in o} & set(common + [IMG])


def test_sampling_seeded(engine, model):
    rows = mixed_rows(model.config)[:3]
    a = run(engine, rows, temperature=1.0, seed=0)
    assert a == run(engine, rows, temperature=1.0, seed=0)
    assert a != run(engine, rows, temperature=1.0, seed=1)
    assert a != run(engine, rows)
    assert run(engine, rows, temperature=1.0, top_k=1, seed=3) == run(engine, rows)  # top-1 is greedy


def test_sample_top_k_support():
    logits = torch.tensor([[0.0, 3.0, 2.0, 1.0, -1.0]]).expand(2000, 5)
    ids = sample(logits, 1.0, top_k=2, generator=torch.Generator().manual_seed(0))
    assert set(ids.tolist()) == {1, 2}


def banned_pairs(mask):
    return sorted(map(tuple, mask.nonzero().tolist()))


def test_ngram_ban_mask_hand_made():
    V = 12
    h = torch.tensor([[1, 2, 3, 1, 2, 4, 1, 2],  # prefix (1, 2) was followed by 3 and 4
                      [5, 6, 5, 6, 5, 0, 0, 0],  # length 5: prefix (6, 5) was followed by 6
                      [9, 9, 9, 9, 9, 9, 9, 9]])
    lengths = torch.tensor([8, 5, 8])
    assert banned_pairs(ngram_ban_mask(h, lengths, 3, 90, V)) == [(0, 3), (0, 4), (1, 6), (2, 9)]
    # the window keeps only grams that start in the last `window` tokens
    assert banned_pairs(ngram_ban_mask(h, lengths, 3, 5, V)) == [(0, 4), (1, 6), (2, 9)]
    assert banned_pairs(ngram_ban_mask(h, lengths, 3, 3, V)) == [(2, 9)]  # row 1's last gram starts at 2
    assert banned_pairs(ngram_ban_mask(h, lengths, 3, 90, V, whitelist=[4, 9])) == [(0, 3), (1, 6)]
    # bigrams: the last token's followers
    assert banned_pairs(ngram_ban_mask(h, lengths, 2, 90, V)) == [(0, 3), (0, 4), (1, 6), (2, 9)]
    # n = 1: every token of the window
    assert banned_pairs(ngram_ban_mask(h, lengths, 1, 90, V)) == [(0, 1), (0, 2), (0, 3), (0, 4), (1, 5),
                                                                   (1, 6), (2, 9)]
    assert banned_pairs(ngram_ban_mask(h, lengths, 1, 2, V)) == [(0, 1), (0, 2), (1, 5), (1, 6), (2, 9)]
    # too short for a repeat, n = 0 (off), n longer than the history
    assert banned_pairs(ngram_ban_mask(h, torch.tensor([2, 0, 2]), 3, 90, V)) == []
    assert banned_pairs(ngram_ban_mask(h, lengths, 0, 90, V)) == []
    assert banned_pairs(ngram_ban_mask(h, lengths, 9, 90, V)) == []
    assert ngram_ban_mask(h, 8, 3, 90, V).shape == (3, V)  # an int length for all rows


def ngram_reference(seq, n, window):
    """DeepSeek's loop, with the n = 1 quirk fixed."""
    prefix, banned = tuple(seq[len(seq) - n + 1:]), set()
    for i in range(max(0, len(seq) - window), len(seq) - n + 1):
        if tuple(seq[i:i + n - 1]) == prefix:
            banned.add(seq[i + n - 1])
    return banned


def test_ngram_ban_mask_matches_loop():
    g = torch.Generator().manual_seed(0)
    for n, window in [(1, 5), (2, 7), (3, 12), (4, 30), (3, 2)]:
        h = torch.randint(0, 4, (16, 24), generator=g)  # a small alphabet: many repeats
        lengths = torch.randint(0, 25, (16,), generator=g)
        got = ngram_ban_mask(h, lengths, n, window, 6, whitelist=[3])
        for b in range(16):
            want = ngram_reference(h[b, :lengths[b]].tolist(), n, window) - {3}
            assert set(got[b].nonzero()[:, 0].tolist()) == want, (n, window, b)


def test_ngram_guard_in_generation(engine, model):
    rows = mixed_rows(model.config)
    full = run(engine, rows, max_new_tokens=40)
    has_repeat = lambda o, n: len({tuple(o[i:i + n]) for i in range(len(o) - n + 1)}) < len(o) - n + 1
    assert any(has_repeat(o, 3) for o in full)  # the random model loops, so the guard has work to do
    out = run(engine, rows, max_new_tokens=40, ngram_size=3, ngram_window=90)
    assert not any(has_repeat(o, 3) for o in out)
    assert out == run(engine, rows, max_new_tokens=40, ngram_size=3, ngram_window=90, use_cache=False)
    looped = [o for o in full if has_repeat(o, 3)]
    wl = sorted({t for o in looped for t in o})
    assert run(engine, rows, max_new_tokens=40, ngram_size=3, ngram_whitelist=wl) == full  # all whitelisted


@pytest.mark.parametrize("use_cache", [True, False])
def test_images_encoded_once(engine, model, monkeypatch, use_cache):
    calls = []
    encode = model.encode_images
    monkeypatch.setattr(model, "encode_images", lambda views: calls.append(len(views)) or encode(views))
    run(engine, mixed_rows(model.config), use_cache=use_cache)
    assert calls == [3]


def test_steps_give_the_tokens_in_order(engine, model):
    rows = mixed_rows(model.config)
    stop = run(engine, rows)[2][3]
    out = run(engine, rows, stop_ids=[stop])
    prompts, views = [p for p, _ in rows], collate_views([v for _, v in rows if v is not None])
    kw = {"max_new_tokens": N_NEW, "banned_ids": [IMG], "stop_ids": [stop]}
    steps = list(engine.generate_steps(prompts, views, **kw))
    seen = [pair for step in steps for pair in step]
    assert [[t for r, t in seen if r == i] for i in range(len(rows))] == out
    assert len(seen) == sum(map(len, out))
    early = []  # a caller that breaks out stops the generation there
    for step in engine.generate_steps(prompts, views, **kw):
        early.append(step)
        if len(early) == 2:
            break
    assert early == steps[:2]


def test_edge_cases(engine, model):
    assert engine.generate([[5, 6]], max_new_tokens=0) == [[]]
    assert engine.generate([]) == []
    with pytest.raises(ValueError, match="empty prompt"):
        engine.generate([[5], []])
    with pytest.raises(ValueError, match="rotary positions"):
        engine.generate([[5] * 100], max_new_tokens=model.gpt.cos.shape[0])


def test_bf16_autocast_runs(model):
    # the CUDA default, exercised on CPU; bf16 near-ties may flip tokens, so no equality with fp32 here
    engine = Engine(model, autocast_dtype=torch.bfloat16)
    for use_cache in (True, False):
        out = run(engine, mixed_rows(model.config), use_cache=use_cache)
        assert [len(o) for o in out] == [N_NEW] * 6
        assert all(0 <= t < 300 and t != IMG for o in out for t in o)
