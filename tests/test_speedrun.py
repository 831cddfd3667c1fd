"""The CPU speedrun end to end, shortened: tiny preset, a few steps. It must leave a usable model folder and
a report with every section (the full run is the README's main job, not a test)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_short_speedrun_writes_model_and_report(tmp_path):
    env = dict(os.environ, NANOOCR_SKIP_INSTALL="1", NANOOCR_BASE_DIR=str(tmp_path), PRESET="tiny",
               MINUTES="2", EVAL_RESERVE="60", P0_STEPS="4", P1_STEPS="4", P2_STEPS="2", BATCH="2", EVAL_N="3",
               WORKERS="0", EVAL_EVERY="2",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    r = subprocess.run(["bash", str(ROOT / "runs" / "runcpu.sh")], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    base = tmp_path / "cpu-speedrun"
    stages = [line.split("\t")[0] for line in (base / "timings.tsv").read_text().splitlines()]
    assert {"data", "tokenizer", "phase1", "phase2", "eval", "ocr"} <= set(stages)
    report = (base / "report.md").read_text()
    for section in ("Held-out accuracy", "Compression", "Does it look at the page?", "Language retention",
                    "Loss curves", "A held-out page"):
        assert section in report, section
    assert "| line | 3 |" in report and "| paragraph | 3 |" in report
    assert (base / "sample.png").stat().st_size > 0 and (base / "phase1" / "loss.png").exists()

    from nanoocr.reader import Reader
    reader = Reader.from_dir(base / "model", device="cpu", max_new_tokens=8)
    assert reader.model.config.gpt.vocab_size == 271  # the byte-level tokenizer of the recipe
    page = Image.open(base / "data" / "heldout_line" / "images" / "000000.png").convert("RGB")
    assert len(reader.read([page])) == 1
