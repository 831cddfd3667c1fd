"""`nanoocr ocr` on the tiny random model: every kind of input, the three output formats, failures and exit
codes. The model writes gibberish, so these check structure and behaviour, never words."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from nanoocr.cli import main as nanoocr

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--mode", "tiny", "--max-new-tokens", "12", "--batch-size", "3", "--device", "cpu"]
SUMMARY = re.compile(r"pages (\d+) \(failed (\d+)\), tokens \d+, [\d.]+ pages/s, [\d.]+ tokens/s")


def page(text, size=(120, 90)):
    im = Image.new("RGB", size, "white")
    ImageDraw.Draw(im).text((8, 8), text, fill="black")
    return im


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    page("one").save(d / "a.png")
    page("two", (80, 140)).save(d / "b.png")
    pdf = [page(f"pdf page {i}", (100, 130)) for i in range(3)]
    pdf[0].save(d / "doc.pdf", save_all=True, append_images=pdf[1:])
    (d / "folder" / "sub").mkdir(parents=True)
    page("f1").save(d / "folder" / "f1.png")
    page("f2").save(d / "folder" / "sub" / "a.jpg")  # same stem as a.png: its output must not overwrite
    (d / "folder" / "broken.png").write_bytes((d / "a.png").read_bytes()[:60])  # a truncated PNG
    return d


def args(inputs, model, *extra):
    files = [inputs / "a.png", inputs / "b.png", inputs / "doc.pdf", inputs / "folder"]
    return ["ocr", *map(str, files), "--model", str(model), *FAST, *extra]


def test_jsonl_one_line_per_good_page(tiny_model_dir, inputs, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    code = nanoocr(args(inputs, tiny_model_dir, "--format", "jsonl", "--out", str(out)))
    err = capsys.readouterr().err
    assert code == 1  # one input failed, the others were still read
    assert re.search(r"broken\.png: .+", err), err
    assert SUMMARY.search(err).groups() == ("7", "1")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 + 3 + 2
    for r in rows:
        assert set(r) == {"source", "page", "text", "boxes", "seconds"}
        assert isinstance(r["text"], str) and isinstance(r["page"], int) and r["seconds"] >= 0
        assert all(set(b) == {"label", "box"} and len(b["box"]) == 4 for b in r["boxes"])
    by_source = {}
    for r in rows:
        by_source.setdefault(Path(r["source"]).name, []).append(r["page"])
    assert by_source == {"a.png": [1], "b.png": [1], "doc.pdf": [1, 2, 3], "f1.png": [1], "a.jpg": [1]}
    assert not any("broken" in r["source"] for r in rows)


def test_md_and_txt_files(tiny_model_dir, inputs, tmp_path, capsys):
    md = tmp_path / "md"
    assert nanoocr(args(inputs, tiny_model_dir, "--format", "md", "--out", str(md))) == 1
    assert "broken.png" in capsys.readouterr().err
    assert sorted(p.name for p in md.glob("*.md")) == ["a-2.md", "a.md", "b.md", "doc.md", "f1.md"]
    doc = (md / "doc.md").read_text()
    assert doc.count("\n\n---\n\n") == 2
    assert [int(n) for n in re.findall(r"<!-- page (\d+) -->", doc)] == [1, 2, 3]
    assert "<!-- page 1 -->" in (md / "a.md").read_text() and "---" not in (md / "a.md").read_text()

    txt = tmp_path / "txt"
    assert nanoocr(args(inputs, tiny_model_dir, "--format", "txt", "--out", str(txt), "--max-pages", "2")) == 1
    assert SUMMARY.search(capsys.readouterr().err).groups() == ("6", "1")  # the PDF stops after 2 pages
    assert (txt / "doc.txt").read_text().count("\n\f\n") == 1
    assert "<|" not in (txt / "a.txt").read_text()  # txt never carries grounding tokens


GROUNDED = ("<|ref|>title<|/ref|><|det|>[[100, 50, 900, 200]]<|/det|>\n# A heading\n\n"
            "<|ref|>image<|/ref|><|det|>[[100, 300, 600, 900]]<|/det|>\n\n"
            "<|ref|>text<|/ref|><|det|>[[1, 2, 3<|/det|>\nbroken grounding stays text")


def test_md_grounding_figures_and_overlays(tiny_model_dir, inputs, tmp_path, monkeypatch, capsys):
    # the random model never writes grounding, so the reader is told what to answer
    from nanoocr.reader import Reader, Result
    monkeypatch.setattr(Reader, "read", lambda self, images, **kw: [Result(GROUNDED, 30, 0.1) for _ in images])
    out = tmp_path / "md"
    assert nanoocr(["ocr", str(inputs / "doc.pdf"), "--model", str(tiny_model_dir), "--out", str(out), *FAST]) == 0
    capsys.readouterr()
    doc = (out / "doc.md").read_text()
    assert "<|ref|>" not in doc.split("broken grounding")[0]  # clean markdown up to the malformed block
    assert "# A heading" in doc and "broken grounding stays text" in doc
    files = out / "doc_files"
    overlays = sorted(p.name for p in files.glob("*_boxes.png"))
    assert overlays == ["doc_p1_boxes.png", "doc_p2_boxes.png", "doc_p3_boxes.png"]
    figures = [p for p in files.iterdir() if not p.name.endswith("_boxes.png")]
    assert len(figures) == 3  # one image block per page
    for f in figures:
        assert f"](doc_files/{f.name})" in doc  # linked relative to the .md file
        assert Image.open(f).size[0] > 1

    monkeypatch.setattr(Reader, "read", lambda self, images, **kw: [Result(GROUNDED, 30, 0.1) for _ in images])
    code = nanoocr(["ocr", str(inputs / "a.png"), "--model", str(tiny_model_dir), "--format", "jsonl", *FAST])
    row = json.loads(capsys.readouterr().out)
    assert code == 0 and row["text"] == GROUNDED
    w, h = Image.open(inputs / "a.png").size
    boxes = {b["label"]: b["box"] for b in row["boxes"]}
    assert set(boxes) == {"title", "image"}  # the malformed block has no box
    x1, y1, x2, y2 = boxes["title"]
    assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h


def test_usage_errors(tiny_model_dir, inputs, tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    assert nanoocr(["ocr", str(inputs / "a.png"), "--model", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "cannot load the model" in err and str(missing) in err
    assert nanoocr(["ocr", str(inputs / "a.png"), "--model", str(tiny_model_dir), "--prompt", "locate"]) == 2
    assert "--ref" in capsys.readouterr().err


def test_stdin_in_a_subprocess(tiny_model_dir, inputs):
    cmd = [sys.executable, "-m", "nanoocr.cli", "ocr", "-", "--model", str(tiny_model_dir), "--format", "jsonl",
           *FAST]
    p = subprocess.run(cmd, input=(inputs / "b.png").read_bytes(), capture_output=True, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    rows = [json.loads(line) for line in p.stdout.decode().splitlines()]
    assert len(rows) == 1 and rows[0]["page"] == 1 and isinstance(rows[0]["text"], str)
    assert SUMMARY.search(p.stderr.decode()).groups() == ("1", "0")


@pytest.mark.parametrize("command,option", [("serve", "--port"), ("ocr", "--prompt"), ("eval", "--data"),
                                            ("synth", "--set"), ("import-weights", "--nanochat")])
def test_each_command_has_its_own_help(command, option, capsys):
    with pytest.raises(SystemExit) as e:
        nanoocr([command, "--help"])
    assert e.value.code == 0 and option in capsys.readouterr().out
