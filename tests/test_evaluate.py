"""Evaluation: the eval sets (manifest, synthetic, Fox and OmniDocBench layouts), scoring with a stand-in
reader whose answers are known, the compression table, failures, bits per byte, and `nanoocr eval`."""

import json
import math
import shutil

import pytest
import torch
from PIL import Image

from nanoocr import metrics
from nanoocr.cli import main as nanoocr
from nanoocr.evaluate import bits_per_byte, compression_table, eval_set, evaluate, vision_grid_tokens
from nanoocr.presets import get_preset
from nanoocr.reader import Result


class StandIn:
    """A reader that answers from a table: exact for some pages, wrong for others."""

    def __init__(self, tokenizer, answers, mode="base"):
        self.model = type("M", (), {"config": get_preset("tiny")})()
        self.tok, self.answers, self.mode, self.calls = tokenizer, answers, mode, []

    def read(self, images, prompt="free", **kw):
        self.calls.append((len(images), prompt))
        return [Result(self.answers[im.info["key"]], 5, 0.01) for im in images]


def write_manifest(tmp_path, rows):
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return tmp_path / "m.jsonl"


def keyed_image(path, key, size=(64, 32)):
    im = Image.new("RGB", size, "white")
    im.save(path, pnginfo=_pnginfo(key))


def _pnginfo(key):
    from PIL.PngImagePlugin import PngInfo
    info = PngInfo()
    info.add_text("key", key)
    return info


def test_manifest_scores_and_failures(tmp_path, tokenizer):
    keyed_image(tmp_path / "a.png", "a")
    keyed_image(tmp_path / "b.png", "b", (200, 40))
    rows = [{"image": "a.png", "text": "hello world", "kind": "line"},
            {"image": "b.png", "text": "the cat sat", "kind": "line"},
            {"image": "missing.png", "text": "x", "kind": "line"},
            {"image": "a.png", "text": "# Title", "kind": "heading", "prompt": "md"}]
    reader = StandIn(tokenizer, {"a": "hello world", "b": "the bat sat"})
    out = tmp_path / "rows.jsonl"
    got, summary = evaluate(reader, eval_set(str(write_manifest(tmp_path, rows))), batch_size=8, out_path=out,
                            progress=False)
    assert summary["n"] == 3 and [f["id"] for f in summary["failed"]] == ["m.jsonl:3"]
    line = summary["by_kind"]["line"]
    assert line["n"] == 2 and line["cer"] == pytest.approx(1 / 22)  # one substitution over 11 + 11 chars
    assert line["exact"] == 0.5 and line["precision"] == pytest.approx((1 + 2 / 3) / 2)
    assert summary["by_kind"]["heading"]["cer"] == pytest.approx(metrics.cer("hello world", "# Title"))
    assert sorted(reader.calls) == [(1, "md"), (2, "free")]  # one batch per prompt
    saved = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(saved) == 3 and all(r["vision_tokens"] > 0 and r["text_tokens"] > 0 for r in saved)
    assert saved[0]["compression"] == pytest.approx(saved[0]["text_tokens"] / saved[0]["vision_tokens"])


def test_compression_table_buckets():
    rows = [{"pred": "a b", "ref": "a b", "compression": 0.5}, {"pred": "a", "ref": "a b", "compression": 0.9},
            {"pred": "x", "ref": "y", "compression": 25.0}]
    table = compression_table(rows)
    assert [(t["bucket"], t["n"]) for t in table] == [("0-1x", 2), ("20-x", 1)]
    assert table[0]["precision"] == 1.0 and table[1]["precision"] == 0.0


def test_vision_grid_tokens_count_grid_cells_only():
    cfg = get_preset("deepseek-d20")
    assert [vision_grid_tokens(800, 600, m, cfg) for m in ("tiny", "small", "base", "large")] == [64, 100, 256, 400]
    assert vision_grid_tokens(1920, 1080, "gundam", cfg) == 256 + 2 * 100


def test_fox_and_omnidocbench_layouts(tmp_path):
    fox = tmp_path / "fox"
    (fox / "focus_benchmark_test" / "en_pdf_png").mkdir(parents=True)
    Image.new("RGB", (40, 50)).save(fox / "focus_benchmark_test" / "en_pdf_png" / "en_1.png")
    (fox / "en_page_ocr.json").write_text(json.dumps([
        {"image": "en_1.png", "conversations": [{"from": "human", "value": "<image>\nOCR"},
                                                {"from": "gpt", "value": "page one text"}]},
        {"image": "absent.png", "conversations": [{"from": "gpt", "value": "skipped: no image"}]}]))
    (s,) = list(eval_set(f"fox:{fox}"))
    assert s["ref"] == "page one text" and s["kind"] == "en_page_ocr" and s["load"]().size == (40, 50)

    omni = tmp_path / "omni"
    (omni / "images").mkdir(parents=True)
    Image.new("RGB", (30, 30)).save(omni / "images" / "p.jpg")
    dets = [{"category_type": "text_block", "text": "second", "order": 2},
            {"category_type": "title", "text": "first", "order": 1},
            {"category_type": "table", "text": "", "html": "<table/>", "order": 3},
            {"category_type": "page_number", "text": "7", "order": 4}]
    (omni / "OmniDocBench.json").write_text(json.dumps([{"layout_dets": dets,
                                                         "page_info": {"image_path": "p.jpg"}}]))
    (s,) = list(eval_set(f"omnidoc:{omni}"))
    assert s["ref"] == "first\n\nsecond" and s["prompt"] == "md" and s["load"]().size == (30, 30)


def test_bits_per_byte_is_cross_entropy(tiny_model_dir):
    from nanoocr.checkpoint import load_model
    model, tok, _ = load_model(tiny_model_dir)
    texts = ["Some held-out text.", "Another paragraph, a little longer than the first one."]
    bpb = bits_per_byte(model, tok, texts)
    nats = 0.0
    for t in texts:
        ids = torch.tensor([tok.bos_id] + tok.encode(t))
        with torch.no_grad():
            logits = model.gpt(ids[None, :-1])
        nats += torch.nn.functional.cross_entropy(logits[0], ids[1:], reduction="sum").item()
    assert bpb == pytest.approx(nats / math.log(2) / sum(len(t.encode()) for t in texts), rel=1e-4)


def test_eval_command(tiny_model_dir, tmp_path, capsys):
    from nanoocr.synth import SynthConfig, write_dataset
    man = write_dataset(tmp_path / "heldout_line", 3, SynthConfig(kinds={"line": 1.0}), "heldout", progress=False)
    code = nanoocr(["eval", "--model", str(tiny_model_dir), "--data", str(man), "--mode", "tiny",
                    "--max-new-tokens", "6", "--device", "cpu", "--out", str(tmp_path / "eval")])
    out = capsys.readouterr().out
    assert code == 0 and "| line | 3 |" in out
    summary = json.loads((tmp_path / "eval" / "heldout_line.summary.json").read_text())
    assert summary["n"] == 3 and summary["by_kind"]["line"]["n"] == 3
    assert len((tmp_path / "eval" / "heldout_line.jsonl").read_text().splitlines()) == 3


def test_image_reliance_tells_a_reader_from_a_blind_model(tiny_model_dir, tmp_path):
    from nanoocr.checkpoint import load_model
    from nanoocr.evaluate import image_reliance
    from nanoocr.synth import SynthConfig, write_dataset
    manifest = write_dataset(tmp_path / "d", 6, SynthConfig(kinds={"line": 1.0}), "heldout")
    model, tok, _ = load_model(tiny_model_dir)
    with torch.no_grad():  # nanochat zero-inits the blocks' output projections: only then can context matter
        for name, p in model.gpt.named_parameters():
            if name.endswith("c_proj.weight"):
                p.normal_(std=0.1)
    r = image_reliance(model, tok, manifest, mode="base", n=6)
    assert r["n"] == 6 and r["own"] != r["swapped"]  # the random model's output depends on its image
    with torch.no_grad():  # a blind model: every image gives the same vision tokens
        model.projector.layers.weight.zero_()
    r = image_reliance(model, tok, manifest, mode="base", n=6)
    assert r["own"] == pytest.approx(r["swapped"], abs=1e-6)


def _eval_compare(tiny_model_dir, tmp_path, capsys):
    from nanoocr.synth import SynthConfig, write_dataset
    man = write_dataset(tmp_path / "heldout_line", 3, SynthConfig(kinds={"line": 1.0}), "heldout", progress=False)
    code = nanoocr(["eval", "--model", str(tiny_model_dir), "--data", str(man), "--mode", "tiny",
                    "--max-new-tokens", "6", "--device", "cpu", "--out", str(tmp_path / "eval"),
                    "--compare", "tesseract"])
    return code, capsys.readouterr().out, json.loads((tmp_path / "eval" / "heldout_line.summary.json").read_text())


def test_compare_without_tesseract_says_so_and_keeps_our_scores(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no tesseract binary anywhere on PATH
    code, out, summary = _eval_compare(tiny_model_dir, tmp_path, capsys)
    assert code == 0 and "| line | 3 |" in out and "tesseract" not in summary
    assert "no 'tesseract' on PATH" in out and "apt-get install tesseract-ocr" in out


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract not installed (apt-get install tesseract-ocr)")
def test_compare_tesseract_scores_the_same_samples(tiny_model_dir, tmp_path, capsys):
    code, out, summary = _eval_compare(tiny_model_dir, tmp_path, capsys)
    t = summary["tesseract"]
    assert code == 0 and t["n"] == 3 and t["engine"].startswith("tesseract")
    rows = [json.loads(line) for line in (tmp_path / "eval" / "heldout_line.tesseract.jsonl").read_text().splitlines()]
    ours = [json.loads(line) for line in (tmp_path / "eval" / "heldout_line.jsonl").read_text().splitlines()]
    assert [r["ref"] for r in rows] == [r["ref"] for r in ours]  # the same samples, in the same order
    assert t["by_kind"]["line"]["cer"] < 0.5  # clean synthetic lines: tesseract reads them
    assert "nanoocr CER" in out and t["engine"] in out
