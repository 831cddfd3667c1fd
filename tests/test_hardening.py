"""Issue #11: every defect a hostile-input run found, one test each (numbered as in the issue). Each of these
failed on the code before the fix; the web ones go through the real app."""

import errno
import fcntl
import io
import json
import os
import re
import struct
import subprocess
import sys
import threading
import warnings
import zlib
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from nanoocr import checkpoint as ck
from nanoocr.cli import main as nanoocr
from nanoocr.common import Dist
from nanoocr.data import DataConfig, JsonlSource, Mixture, OCRDataset, SkipLog, SynthSource, _open_image, collate
from nanoocr.inputs import Failure, InputError, Page, iter_pages, load_image
from nanoocr.model import NanoDeepseekOCR
from nanoocr.presets import OCRConfig, get_preset
from nanoocr.reader import Reader
from nanoocr.train import TrainConfig, fit, plot_losses
from nanoocr.web.app import create_app

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--mode", "tiny", "--max-new-tokens", "4", "--batch-size", "2", "--device", "cpu"]


def png_file(path, size=(60, 40), text="hi"):
    im = Image.new("RGB", size, "white")
    ImageDraw.Draw(im).text((4, 4), text, fill="black")
    im.save(path)
    return path


def png_bytes(im):
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# 1 + 12: training on a manifest with wrong-shape rows, resumed; the --out lock; metrics on disk before a save


def manifest(tmp_path, rows):
    png_file(tmp_path / "good.png")
    man = tmp_path / "m.jsonl"
    man.write_text("\n".join(rows) + "\n")
    return man


WRONG_SHAPE = ['42', '{"messages": "hello"}', '{"image": "good.png", "text": 5}',
               '{"messages": [{"role": "user"}]}', '["a", "list"]']


def tiny_run(tokenizer, man, out, steps, resume=None):
    model = tiny_model(0, tokenizer.image_id, head_std=0, vocab_size=tokenizer.vocab_size)
    cfg = model.config
    ds = OCRDataset(Mixture([JsonlSource(man)]), tokenizer, cfg, DataConfig("tiny", 128))
    tc = TrainConfig(steps=steps, batch_size=2, save_every=1, eval_every=1000, workers=0, warmup_ratio=0.0,
                     out_dir=str(out))
    return fit(model, ds, None, tc, Dist(), resume=resume)


def test_1_wrong_shape_rows_are_bad_samples_in_training_and_resume(tokenizer, tmp_path):
    good = '{"image": "good.png", "text": "hello"}'
    man = manifest(tmp_path, WRONG_SHAPE + [good, good])
    out = tmp_path / "run"
    summary = tiny_run(tokenizer, man, out, steps=2)
    assert summary["steps"] == 2 and summary["skips"]["by_reason"]["wrong row shape"] > 0
    assert set(summary["skips"]["by_reason"]) == {"wrong row shape"}  # one bucket, not one per line
    summary = tiny_run(tokenizer, man, out, steps=4, resume=out / "ckpt")  # --resume reads the same rows
    assert summary["steps"] == 4

    # skip reasons are counted by kind of problem, whatever the line
    bad = manifest(tmp_path, ["{not json", good, "{also not", "[1,", good])
    cfg = get_preset("tiny", vocab_size=tokenizer.vocab_size)
    ds = OCRDataset(Mixture([JsonlSource(bad)]), tokenizer, cfg, DataConfig("tiny", 128))
    log = SkipLog()
    log.add(collate([ds[k] for k in range(5)]))
    assert log.summary()["by_reason"] == {"invalid JSON": 3}
    assert all(re.search(r"m\.jsonl:\d+: invalid JSON", e) for e in log.summary()["examples"])

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match=r"empty\.jsonl: no samples"):
        Mixture([JsonlSource(empty)])


def test_12_out_lock_and_metrics_on_disk_before_each_save(tokenizer, tmp_path, monkeypatch):
    man = manifest(tmp_path, ['{"image": "good.png", "text": "hello"}'])
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "a+") as held:  # another run holds the folder
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RuntimeError, match="another training run"):
            tiny_run(tokenizer, man, out, steps=1)

    seen = []
    real = ck.save_training_state

    def save(root, step, *a, **kw):  # a kill -9 during this save must not lose the step's metrics row
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        seen.append((step, [r["step"] for r in rows if r.get("kind") == "train"]))
        return real(root, step, *a, **kw)

    monkeypatch.setattr(ck, "save_training_state", save)
    tiny_run(tokenizer, man, out, steps=2)
    assert seen == [(1, [1]), (2, [1, 2])]


# ----------------------------------------------------------------------------------------------
# 2: the mixture's weights


def test_2_mixture_weights_hold_with_three_sources():
    a, b, c = SynthSource(size=100), SynthSource(size=100), SynthSource(size=100)
    n = 9000
    for weights in ([1, 1, 1], [0.35, 0.35, 0.3]):  # the second: two data sources plus --text-ratio 0.3
        mix = Mixture([a, b, c], weights, seed=0)
        picks = [mix.locate(k)[0] for k in range(n)]
        got = [sum(p is s for p in picks) / n for s in (a, b, c)]
        want = [w / sum(weights) for w in weights]
        assert all(abs(g - w) < 0.02 for g, w in zip(got, want)), got


# ----------------------------------------------------------------------------------------------
# 3: held-out text never overlaps training text


def test_3_heldout_sample_without_fresh_text_raises(monkeypatch):
    from nanoocr import synth
    monkeypatch.setattr(synth, "_fresh", lambda text: False)  # every draw shares a line with training text
    with pytest.raises(ValueError, match="fresh"):
        synth.generate(0, synth.SynthConfig(), "heldout")
    assert synth.generate(0, synth.SynthConfig(), "train").text  # training text is not checked


# ----------------------------------------------------------------------------------------------
# 4: one image decoder for training, eval, ocr and serve


def test_4_training_decodes_images_as_ocr_does(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # fully transparent: white on a page
    rgba.save(tmp_path / "clear.png")
    im = Image.new("RGB", (40, 20), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees to view
    im.save(tmp_path / "rotated.jpg", exif=exif)
    for name in ("clear.png", "rotated.jpg"):
        ours, theirs = _open_image(name, tmp_path), load_image(tmp_path / name)
        assert ours.size == theirs.size and ours.tobytes() == theirs.tobytes(), name
    assert _open_image("clear.png", tmp_path).getpixel((3, 3)) == (255, 255, 255)
    assert _open_image("rotated.jpg", tmp_path).size == (20, 40)
    (tmp_path / "m.jsonl").write_text('{"image": "rotated.jpg", "text": "x"}\n')
    assert JsonlSource(tmp_path / "m.jsonl")[0]["images"][0].size == (20, 40)


# ----------------------------------------------------------------------------------------------
# 5, 6, 8: nanoocr ocr's output and arguments


def test_5_out_that_is_an_input_is_refused(tiny_model_dir, tmp_path, capsys):
    a = png_file(tmp_path / "a.png")
    before = a.read_bytes()
    code = nanoocr(["ocr", str(a), "--model", str(tiny_model_dir), *FAST, "--format", "jsonl", "--out", str(a)])
    assert code == 2 and "is one of the inputs" in capsys.readouterr().err
    assert a.read_bytes() == before


def test_6_output_failures_are_reported_not_raised(tiny_model_dir, tmp_path, monkeypatch, capsys):
    a, b = png_file(tmp_path / "a.png"), png_file(tmp_path / "b.png")
    doc = tmp_path / "doc.pdf"
    Image.new("RGB", (60, 80), "white").save(doc, save_all=True, append_images=[Image.new("RGB", (60, 80))])
    model = ["--model", str(tiny_model_dir), *FAST]

    # a bad --out is found before the model loads
    loads = []
    real_from_dir = Reader.from_dir.__func__
    monkeypatch.setattr(Reader, "from_dir", classmethod(lambda cls, *a, **k: loads.append(1) or
                                                        real_from_dir(cls, *a, **k)))
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert nanoocr(["ocr", str(a), *model, "--out", str(blocker / "sub")]) == 2  # md: a folder under a file
    assert nanoocr(["ocr", str(a), *model, "--format", "jsonl", "--out", str(tmp_path / "no" / "x.jsonl")]) == 2
    assert loads == [] and capsys.readouterr().err.count("cannot write --out") == 2

    # the output file of one input cannot be written: its pages fail, the next input is still written
    out = tmp_path / "out"
    (out / "doc.md").mkdir(parents=True)  # in the way of doc.md
    code = nanoocr(["ocr", str(doc), str(b), *model, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "doc.md" in err and "Traceback" not in err
    assert (out / "b.md").read_text().startswith("<!-- page 1 -->")

    # disk full when the last file is finished
    def full(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    code = nanoocr(["ocr", str(a), *model, "--format", "jsonl", "--out", str(tmp_path / "x.jsonl")])
    err = capsys.readouterr().err
    assert code == 1 and "No space left on device" in err and "(failed 1)" in err


@pytest.mark.parametrize("flag", ["--max-new-tokens", "--max-pages", "--dpi"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_8_counts_below_one_are_usage_errors(tiny_model_dir, tmp_path, capsys, flag, value):
    a = png_file(tmp_path / "a.png")
    argv = ["ocr", str(a), "--model", str(tiny_model_dir), *FAST, "--out", str(tmp_path / "o"), flag, value]
    assert nanoocr(argv) == 2
    assert f"{flag} must be at least 1" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# 7: inputs that never end


def test_7_fifo_in_a_folder_and_stdin_are_bounded(tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    png_file(folder / "good.png")
    fifo = folder / "stuck.png"
    os.mkfifo(fifo)
    got = []
    t = threading.Thread(target=lambda: got.extend(iter_pages([folder])), daemon=True)
    t.start()
    t.join(20)
    if t.is_alive():  # release the reader blocked on the FIFO before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("iter_pages hangs on a FIFO in a folder")
    assert [type(x) for x in got] == [Page, Failure] and "not a regular file" in got[1].error

    class Endless(io.RawIOBase):
        asked = []

        def read(self, n=-1):
            self.asked.append(n)
            if n is None or n < 0:
                raise MemoryError("read without a bound")
            return b"\0" * n

    from nanoocr import inputs
    monkeypatch.setattr(inputs, "MAX_STREAM_BYTES", 4096, raising=False)
    items = list(iter_pages(["-"], stdin=Endless()))
    assert len(items) == 1 and isinstance(items[0], Failure) and "more than" in items[0].error


# ----------------------------------------------------------------------------------------------
# 9 + 14: nanoocr serve


@pytest.fixture(scope="module")
def reader(tiny_model_dir):
    return Reader.from_dir(tiny_model_dir, device="cpu", mode="tiny", max_new_tokens=4)


def huge_page_pdf(n, inches=200):
    import pypdfium2 as pdfium
    pdf = pdfium.PdfDocument.new()
    for _ in range(n):
        pdf.new_page(72 * inches, 72 * inches)
    buf = io.BytesIO()
    pdf.save(buf)
    return buf.getvalue()


def post(client, data, name="page.png", headers=None, **fields):
    return client.post("/api/ocr", files={"file": (name, data)}, data=fields, headers=headers or {})


def test_9_huge_pages_are_refused_and_pages_render_lazily(reader, monkeypatch):
    from nanoocr import inputs
    client = TestClient(create_app(reader, max_pages=20, batch_size=2))
    data = huge_page_pdf(3)  # three 200 x 200 inch pages: 50 MP each after the render cap
    assert len(data) < 4000
    rendered = []
    real = inputs._render
    monkeypatch.setattr(inputs, "_render", lambda *a: rendered.append(1) or real(*a))
    r = post(client, data, "poster.pdf")
    assert r.status_code == 413 and "MP" in r.json()["detail"] and rendered == []

    # a normal PDF: at most batch_size pages rendered ahead of the model
    pages = [Image.new("RGB", (60, 80), (255, 255 - 30 * i, 255)) for i in range(6)]
    buf = io.BytesIO()
    pages[0].save(buf, format="PDF", save_all=True, append_images=pages[1:])
    ahead = []
    read = Reader.read
    monkeypatch.setattr(Reader, "read", lambda self, images, **kw: ahead.append(len(rendered)) or
                        read(self, images, **kw))
    r = post(client, buf.getvalue(), "doc.pdf")
    assert r.status_code == 200 and len(r.json()["pages"]) == 6
    assert [p["page"] for p in r.json()["pages"]] == [1, 2, 3, 4, 5, 6]
    assert ahead == [2, 4, 6]


def test_9_cross_origin_posts_and_foreign_hosts_are_refused(reader):
    page = png_bytes(Image.new("RGB", (40, 30), "white"))
    anywhere = TestClient(create_app(reader), base_url="http://ocr.lan:8000")  # bound to all interfaces
    assert post(anywhere, page, headers={"Origin": "https://evil.example"}).status_code == 403
    assert post(anywhere, page, headers={"Origin": "http://ocr.lan:8000"}).status_code == 200
    assert anywhere.get("/healthz").status_code == 200
    local = TestClient(create_app(reader, local_only=True), base_url="http://127.0.0.1:8000")
    assert post(local, page).status_code == 200
    assert post(local, page, headers={"Origin": "http://127.0.0.1:8000"}).status_code == 200
    r = post(local, page, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and "cross-origin" in r.json()["detail"]
    assert post(local, page, headers={"Origin": "null"}).status_code == 403
    r = local.get("/healthz", headers={"Host": "evil.example:8000"})  # DNS rebinding
    assert r.status_code == 421


def test_9_bad_prompts_are_4xx(reader):
    client = TestClient(create_app(reader))
    page = png_bytes(Image.new("RGB", (40, 30), "white"))
    for prompt in ("<image>\n<image>\nRead both.", "x" * 900_000):
        r = post(client, page, prompt=prompt)
        assert r.status_code == 422, (prompt[:20], r.status_code, r.text[:200])
    r = post(client, page, prompt="locate", ref="<image>")
    assert r.status_code == 422


def render_inline(page_html, markdown):
    """The page's own inline-markdown rule for images, run on `markdown` (JS regex syntax is Python's here)."""
    m = re.search(r"\.replace\(/(!\\\[.*?)/g, '(<img[^']*)'\)", page_html)
    assert m, "the image rule of inline() not found in the page"
    return re.sub(m.group(1), m.group(2).replace("$1", r"\1").replace("$2", r"\2"), markdown)


def test_9_page_shows_only_data_uri_images_and_docs_say_they_need_a_cdn(reader):
    client = TestClient(create_app(reader))
    html = client.get("/").text
    for url in ("//evil.example/x", "http://evil.example/x.png", "/x.png", "x.png"):
        assert "<img" not in render_inline(html, f"![]({url})"), url
    assert '<img alt="fig" src="data:image/png;base64,iVBOR=">' == \
        render_inline(html, "![fig](data:image/png;base64,iVBOR=)")
    docs = client.get("/docs")
    assert docs.status_code == 200 and "without internet" in docs.text and 'href="/openapi.json"' in docs.text


# ----------------------------------------------------------------------------------------------
# 10: only an explicit hf: path reaches the network


def test_10_missing_local_path_is_not_a_repo_id(tmp_path, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    calls = []
    monkeypatch.setattr(hub, "snapshot_download", lambda repo, **kw: calls.append(repo) or str(tmp_path))
    monkeypatch.chdir(tmp_path)
    for path in ("models/d20", "org/name"):
        with pytest.raises(FileNotFoundError, match="no such folder"):
            ck.load_model(path)
    from nanoocr import weights
    with pytest.raises(FileNotFoundError, match="no such folder"):
        weights.load_hf_sam(NanoDeepseekOCR(get_preset("tiny")), "facebook/sam-vit-base")
    assert calls == []
    with pytest.raises(FileNotFoundError):  # hf: is asked for: the (faked) hub is called
        ck.load_model("hf:org/name")
    assert calls == ["org/name"]


# ----------------------------------------------------------------------------------------------
# 11: model config values


@pytest.mark.parametrize("part,key,value,message", [
    ("gpt", "n_head", 0, r"gpt\.n_head: 0"),
    ("gpt", "n_layer", "two", r"gpt\.n_layer: 'two'"),
    ("gpt", "sequence_len", 1e9, r"gpt\.sequence_len"),
    ("gpt", "sequence_len", 10**9, r"gpt\.sequence_len"),
    ("gpt", "vocab_size", -5, r"gpt\.vocab_size"),
    ("sam", "depth", True, r"sam\.depth"),
    ("sam", "mlp_ratio", float("nan"), r"sam\.mlp_ratio"),
    ("clip", "heads", 2.0, r"clip\.heads"),
    ("sizes", "base", 100000, r"sizes\.base"),
    ("sizes", "tiny", "32", r"sizes\.tiny"),
    ("sam", "global_blocks", ["1"], r"sam\.global_blocks"),
])
def test_11_config_values_are_checked_with_the_field_named(part, key, value, message):
    d = get_preset("tiny").to_dict()
    d[part][key] = value
    with pytest.raises(ValueError, match=message):
        OCRConfig.from_dict(d)


def test_11_every_preset_still_validates():
    from nanoocr.presets import PRESETS
    for name in PRESETS:
        get_preset(name)


# ----------------------------------------------------------------------------------------------
# 12: logs and checkpoints after a kill


def test_12_malformed_log_lines_stale_copies_and_a_corrupt_newest_checkpoint(tmp_path, capsys):
    from nanoocr.train import MetricsLog
    log = tmp_path / "metrics.jsonl"
    rows = [{"kind": "train", "step": s, "loss": 1.0 / s} for s in (1, 2, 3)]
    log.write_text("\n".join(json.dumps(r) for r in rows) + '\n42\n"text"\n{"kind": "train", "st\n')
    plot_losses(log, tmp_path / "loss.png", "t")
    assert (tmp_path / "loss.png").stat().st_size > 0
    MetricsLog(log, resume_step=2).close()
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2]

    # a save killed mid-way leaves copies named after its (now gone) process: the next save removes them
    gone = subprocess.Popen(["true"])
    gone.wait()
    torch.manual_seed(0)
    model = NanoDeepseekOCR(get_preset("tiny"))
    ck.save_model(model, tmp_path / "model")
    (tmp_path / f".model.old-{gone.pid}").mkdir()
    (tmp_path / f".model.tmp-{gone.pid}-abc123").mkdir()
    (tmp_path / f".model.tmp-{os.getpid()}-live").mkdir()  # a save in progress (here: this process) stays
    ck.save_model(model, tmp_path / "model")
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".model"))
    assert left == [f".model.tmp-{os.getpid()}-live"]
    # killed between the two renames: the folder is missing, its complete old version is put back
    os.rename(tmp_path / "model", tmp_path / f".model.old-{gone.pid}")
    ck.save_model(model, tmp_path / "model")
    assert ck.load_model(tmp_path / "model")[0] is not None
    assert not (tmp_path / f".model.old-{gone.pid}").exists()

    # the newest training checkpoint is corrupt: the previous one is loaded, and a warning says so
    opt = torch.optim.AdamW(model.parameters())
    root = tmp_path / "ckpt"
    ck.save_training_state(root, 1, model, opt, {"s": 1})
    ck.save_training_state(root, 2, model, opt, {"s": 2})
    (root / "step_000002" / "model.safetensors").write_bytes(b"half a file")
    capsys.readouterr()
    assert ck.load_training_state(root, model, opt) == (1, {"s": 1})
    err = capsys.readouterr().err
    assert "step_000002" in err and "step_000001 instead" in err


# ----------------------------------------------------------------------------------------------
# 13: nanochat's vocab padding


def test_13_nanochat_padding_rows_are_fresh_rows_for_our_tokens(tmp_path):
    from nanoocr import weights
    from nanoocr.gpt import GPT
    from nanoocr.presets import GPTConfig

    base = dict(sequence_len=64, vocab_size=256, n_layer=2, n_head=4, n_kv_head=2, n_embd=48)
    torch.manual_seed(0)
    src = GPT(GPTConfig(**base))
    src.init_weights()
    torch.nn.init.normal_(src.lm_head.weight, std=0.3)
    weights.save_nanochat(src, tmp_path / "nc", step=1)
    meta = tmp_path / "nc" / "meta_000001.json"
    doc = json.loads(meta.read_text())
    doc["model_config"]["vocab_size"] = 250  # the real vocab; the tables are padded to 256 rows
    meta.write_text(json.dumps(doc))
    torch.manual_seed(1)
    dst = GPT(GPTConfig(**base))
    dst.init_weights()
    report = weights.load_nanochat(dst, tmp_path / "nc")
    assert torch.equal(dst.transformer.wte.weight[:250], src.transformer.wte.weight[:250])
    assert not torch.equal(dst.transformer.wte.weight[250:], src.transformer.wte.weight[250:])
    assert "transformer.wte.weight[250:256]" in report.fresh and "lm_head.weight[250:256]" in report.fresh


def test_13_rows_past_the_tokenizer_are_never_decoded(tokenizer):
    # a decoder with rows past the tokenizer's vocab (padding), made the likeliest: greedy decoding skips them
    cfg = get_preset("tiny", vocab_size=tokenizer.vocab_size + 16)
    torch.manual_seed(0)
    model = NanoDeepseekOCR(cfg).init_weights()
    model.image_token_id = tokenizer.image_id
    with torch.no_grad():
        model.gpt.lm_head.weight[tokenizer.vocab_size:] = 5.0 * model.gpt.transformer.wte.weight.std()
        model.gpt.lm_head.weight[tokenizer.vocab_size:] += torch.randn_like(
            model.gpt.lm_head.weight[tokenizer.vocab_size:])
    r = Reader(model, tokenizer, device="cpu", mode="tiny", max_new_tokens=6)
    out = r.read([Image.new("RGB", (40, 30), "white")])
    assert out[0].tokens > 0 and isinstance(out[0].text, str)


# ----------------------------------------------------------------------------------------------
# 14: messages that advise users to do unsafe or confusing things


def test_14_no_decompression_bomb_warning_and_no_weights_only_advice(tmp_path):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 10_000, 10_000, 8, 2, 0, 0, 0)  # 100 MP: over PIL's warning limit
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(InputError, match="image too large"):
            load_image(bomb, name="bomb.png")
    assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]

    import fractions

    from nanoocr import weights
    torch.save({"w": torch.zeros(2), "x": fractions.Fraction(1, 3)}, tmp_path / "model_000001.pt")
    with pytest.raises(ck.CheckpointError) as e:
        weights._torch_load(tmp_path / "model_000001.pt")
    assert "weights_only" not in str(e.value) and "safe_globals" not in str(e.value)
    assert "fractions.Fraction" in str(e.value)


# ----------------------------------------------------------------------------------------------
# the suite prints pytest's summary line


def test_pytest_prints_its_summary_line(tmp_path):
    (tmp_path / "test_one.py").write_text("def test_one():\n    pass\n")
    r = subprocess.run([sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir",
                        str(tmp_path), "-q", "-p", "no:cacheprovider", str(tmp_path / "test_one.py")],
                       capture_output=True, text=True, timeout=120)
    assert re.search(r"\b1 passed\b", r.stdout), r.stdout
    assert "python -m pytest -q" in (ROOT / "runs" / "test.sh").read_text()  # the script's own -q alone
