"""Data sources on small local files: JSONL manifests (both forms), local Hugging Face datasets in the
FineVision layout (save_to_disk and parquet), text-only chat, the mixture's ratios and determinism, and the
DataLoader path with workers."""

import json

import pytest
import torch
from PIL import Image, ImageDraw

from nanoocr.data import (
    DataConfig,
    HFSource,
    JsonlSource,
    Mixture,
    OCRDataset,
    SynthSource,
    TextChatSource,
    glyph_targets,
    make_loader,
    open_source,
)
from nanoocr.image import num_image_tokens
from nanoocr.presets import apply_overrides, get_preset
from nanoocr.synth import SynthConfig

datasets = pytest.importorskip("datasets")


def page(text, size=(90, 40)):
    im = Image.new("RGB", size, "white")
    ImageDraw.Draw(im).text((4, 4), text, fill="black")
    return im


def finevision_rows(n):
    return {"images": [[page(f"img {i}")] for i in range(n)],
            "texts": [[{"user": "What does it say?", "assistant": f"img {i}"},
                       {"user": "And again?", "assistant": f"still img {i}"}] for i in range(n)]}


def check_finevision(src, tokenizer):
    assert len(src) == 3
    ex = src[1]
    assert len(ex["images"]) == 1 and ex["images"][0].size == (90, 40)
    assert [m["role"] for m in ex["messages"]] == ["user", "assistant"] * 2
    assert ex["messages"][0]["content"].startswith("<image>\n") and ex["messages"][3]["content"] == "still img 1"
    cfg = get_preset("tiny", vocab_size=tokenizer.vocab_size)
    ds = OCRDataset(Mixture([src]), tokenizer, cfg, DataConfig("base", 256))
    item = ds[0]
    assert "skip" not in item, item
    assert int((item["ids"] == tokenizer.image_id).sum()) == num_image_tokens(90, 40, "base", cfg)


def test_hf_save_to_disk(tmp_path, tokenizer):
    features = datasets.Features({"images": datasets.Sequence(datasets.Image()),
                                  "texts": [{"user": datasets.Value("string"), "assistant": datasets.Value("string")}]})
    datasets.Dataset.from_dict(finevision_rows(3), features=features).save_to_disk(str(tmp_path / "fv"))
    src = open_source(str(tmp_path / "fv"))
    assert isinstance(src, HFSource)
    check_finevision(src, tokenizer)


def test_hf_parquet(tmp_path, tokenizer):
    features = datasets.Features({"images": datasets.Sequence(datasets.Image()),
                                  "texts": [{"user": datasets.Value("string"), "assistant": datasets.Value("string")}]})
    (tmp_path / "pq" / "data").mkdir(parents=True)
    datasets.Dataset.from_dict(finevision_rows(3), features=features).to_parquet(
        str(tmp_path / "pq" / "data" / "train-00000.parquet"))
    check_finevision(HFSource(tmp_path / "pq"), tokenizer)
    with pytest.raises(FileNotFoundError, match="no dataset"):
        HFSource(tmp_path / "empty-nothing-here")


def test_jsonl_messages_form_and_text_chat(tmp_path, tokenizer):
    page("a").save(tmp_path / "a.png")
    page("b").save(tmp_path / "b.png")
    rows = [{"images": ["a.png", "b.png"], "messages": [
        {"role": "user", "content": "first <image> then <image>: compare"},
        {"role": "assistant", "content": "a and b"}]}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    src = JsonlSource(tmp_path / "m.jsonl")
    assert len(src) == 1 and len(src[0]["images"]) == 2
    cfg = get_preset("tiny", vocab_size=tokenizer.vocab_size)
    item = OCRDataset(Mixture([src]), tokenizer, cfg, DataConfig("tiny", 256))[0]
    assert int((item["ids"] == tokenizer.image_id).sum()) == 2 * num_image_tokens(90, 40, "tiny", cfg)
    assert len(item["views"]) == 2

    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n")
    text = open_source(f"text:{chat}")
    assert isinstance(text, TextChatSource)
    item = OCRDataset(Mixture([text]), tokenizer, cfg, DataConfig("tiny", 64))[0]
    assert item["views"] == [] and tokenizer.image_id not in item["ids"].tolist()
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        JsonlSource(tmp_path / "nope.jsonl")


def test_mixture_ratio_and_determinism(tmp_path):
    a, b = SynthSource(size=1000), SynthSource(size=50)
    mix = Mixture([a, b], [0.7, 0.3], seed=3)
    picks = [mix.locate(k)[0] is b for k in range(4000)]
    assert abs(sum(picks) / 4000 - 0.3) < 0.03
    again = Mixture([a, b], [0.7, 0.3], seed=3)
    assert [mix.locate(k)[1] for k in range(200)] == [again.locate(k)[1] for k in range(200)]
    single = Mixture([b], seed=1)  # one finite source: every item once per epoch, a new order each epoch
    e0, e1 = [single.locate(k)[1] for k in range(50)], [single.locate(k)[1] for k in range(50, 100)]
    assert sorted(e0) == sorted(e1) == list(range(50)) and e0 != e1


def test_loader_with_workers_matches_in_process(tokenizer):
    cfg = get_preset("tiny", vocab_size=tokenizer.vocab_size)
    ds = OCRDataset(Mixture([SynthSource()], seed=0), tokenizer, cfg, DataConfig("base", 256))
    a = next(iter(make_loader(ds, 3, start=6, workers=0)))
    b = next(iter(make_loader(ds, 3, start=6, workers=2)))
    assert torch.equal(a["inputs"], b["inputs"]) and torch.equal(a["targets"], b["targets"])
    assert torch.equal(a["views"].global_views, b["views"].global_views)
    # rank 1 of 2 reads the odd samples
    r1 = next(iter(make_loader(ds, 2, start=6, rank=1, world=2, workers=0)))
    assert torch.equal(r1["inputs"][0, :20], a["inputs"][1, :20])


def test_glyph_targets_follow_the_view_geometry():
    cfg = apply_overrides(get_preset("cpu"), ["sam.patch_size=8"])  # base view 256 px, 8x8 cells of 32 px
    ids = {" ": 0, "a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6}
    glyphs = [("a", 10, 5), ("b", 100, 40), ("c", 200, 10), ("d", 210, 12), ("e", 50, 50), ("f", 60, 52)]
    lab = glyph_targets(glyphs, (256, 64), "base", cfg, ids.get)  # padded: the image sits in view rows 96-159
    assert lab.shape == (num_image_tokens(256, 64, "base", cfg), 3) == (8 * 9 + 1, 3)
    cells, layout = lab[:-1].view(8, 9, 3)[:, :8], lab[:-1].view(8, 9, 3)[:, 8]
    assert (layout == -1).all() and (lab[-1] == -1).all()  # newline and separator tokens carry no label
    assert (cells[:3] == -1).all() and (cells[5:] == -1).all()  # padding rows
    assert cells[3, 0].tolist() == [1, 0, 0] and cells[4, 3].tolist() == [2, 0, 0]  # one character, then spaces
    assert cells[3, 6].tolist() == [3, 4, 0] and cells[4, 1].tolist() == [5, 6, 0]  # two, in reading order
    empty = cells[3:5][cells[3:5, :, 0] == 0]  # every other cell of the page is empty paper, in slot 0 only
    assert len(empty) == 16 - 4 and (empty[:, 1:] == -1).all()
    small = glyph_targets(glyphs, (256, 64), "small", cfg, ids.get)  # small: resized, not padded (8x8 -> 5x5)
    assert len(small) == num_image_tokens(256, 64, "small", cfg)


def test_glyph_targets_name_every_character_of_body_text(tokenizer):
    """At the cpu preset's 16 px cells, 14-20 px text puts 1-2 centres in most cells: every drawn character
    that shares its cell with at most two others is labelled, in reading order."""
    cfg = get_preset("cpu", vocab_size=tokenizer.vocab_size)
    synth = SynthConfig(kinds={"line": 1.0, "paragraph": 1.0}, augment=0.0)
    ds = OCRDataset(Mixture([SynthSource(synth)]), tokenizer, cfg, DataConfig("base", 768, glyphs=True))
    space = tokenizer.encode(" ")[0]
    multi = 0
    for k in range(4):
        src, i = ds.mix.locate(k)
        s = src[i]
        g = cfg.sizes["base"] // 16
        lab = ds[k]["glyphs"][:-1].view(g, g + 1, 3)[:, :g]
        named = "".join(tokenizer.decode([t]) for t in lab.flatten().tolist() if t >= 0 and t != space)
        assert sorted(named) == sorted(c for c, _, _ in s["glyphs"])
        multi += int((lab[..., 1] >= 0).logical_and(lab[..., 1] != space).sum())
    assert multi > 20  # cells holding two characters are labelled too


def test_answer_tokens_point_at_the_cells_of_their_characters(tokenizer):
    """token_cells (the alignment loss's targets): each answer token points at a vision token of the image, in
    reading order, and the token's own character is one of those its cell is labelled with."""
    cfg = get_preset("cpu", vocab_size=tokenizer.vocab_size)
    synth = SynthConfig(kinds={"line": 1.0, "paragraph": 1.0}, font_size=(30, 34), augment=0.0)
    ds = OCRDataset(Mixture([SynthSource(synth)]), tokenizer, cfg, DataConfig("base", 768, glyphs=True))
    space = tokenizer.encode(" ")[0]
    checked = 0
    for k in range(6):
        item = ds[k]
        ids, cells = item["ids"], item["cells"]
        image = (ids == tokenizer.image_id).nonzero().flatten()
        pointed = cells[cells >= 0]
        assert len(pointed) >= 2 and bool(item["mask"][cells >= 0].all())  # answer tokens only
        assert bool((pointed >= image[0]).all() and (pointed <= image[-1]).all())
        assert bool((ids[pointed] == tokenizer.image_id).all())
        for p in (cells >= 0).nonzero().flatten().tolist():
            named = [t for t in item["glyphs"][cells[p] - image[0]].tolist() if t >= 0 and t != space]
            assert tokenizer.decode([int(ids[p])]).strip()[0] in tokenizer.decode(named), (k, p)
            checked += 1
    assert checked >= 10
    batch = next(iter(make_loader(ds, 2, workers=0)))
    assert batch["align"].shape == (2, *batch["inputs"].shape) and batch["align_keys"] > 0
    assert torch.equal(batch["align"][0, :, 1:], batch["align"][1, :, :-1])  # row 0 = row 1 shifted by one
