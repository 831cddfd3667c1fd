"""`nanoocr bench --smoke`: every section runs and writes well-formed records. No timing assertions: the
numbers only have to exist and be positive, never to be fast."""

import json

import pytest

from nanoocr.cli import main

# every record of a kind carries these keys as positive numbers
POSITIVE = {
    "encoder": ["batch", "size", "views", "ms", "ms_per_view", "views_s"],
    "train": ["batch", "seq_len", "views", "ms", "samples_s", "tokens_s", "target_tokens_s", "flops", "flops_analytic",
              "flops_s", "peak_mem_mb"],
    "data": ["batch", "samples_s", "target_ratio", "step_samples_s_phase1", "step_samples_s_phase2", "ratio_phase1",
             "ratio_phase2"],
    "generate": ["batch", "prompt_len", "new_tokens", "prefill_ms", "cached_ms", "uncached_ms", "kv_speedup"],
    "e2e": ["batch", "new_tokens", "s", "pages_s", "tokens_s"],
}
ENV = ["torch", "python", "device", "device_name", "threads", "dtype", "compile", "preset", "params", "total_params"]


def _positive(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_smoke_writes_every_section(tmp_path, monkeypatch):
    monkeypatch.delenv("NANOOCR_PEAK_FLOPS", raising=False)
    out = tmp_path / "smoke.jsonl"
    assert main(["bench", "--smoke", "--out", str(out)]) == 0
    recs = _records(out)
    env = recs[0]
    assert env["kind"] == "env" and [r["kind"] for r in recs].count("env") == 1
    assert all(k in env for k in ENV) and env["preset"] == "tiny" and env["device"] == "cpu"
    assert env["dtype"] == "fp32" and env["total_params"] == sum(env["params"].values()) > 0
    for kind, keys in POSITIVE.items():
        rows = [r for r in recs if r["kind"] == kind]
        assert rows, f"no {kind} records"
        for r in rows:
            assert "error" not in r, r
            bad = [k for k in keys if not _positive(r.get(k))]
            assert not bad, f"{kind}: {bad} not positive numbers in {r}"

    enc = [r for r in recs if r["kind"] == "encoder"]
    assert {(r["pass"], r["policy"]) for r in enc} == {("forward", None), ("fwd+bwd", "align"), ("fwd+bwd", "all")}
    assert {r["mode"] for r in enc} == {"tiny", "base", "gundam"}
    for r in enc:  # gundam counts its local crops as views too
        assert (r["views"] > r["batch"]) == (r["mode"] == "gundam")

    train = [r for r in recs if r["kind"] == "train"]
    assert {(r["phase"], r["policy"]) for r in train} == {("phase1", "align"), ("phase2", "finetune")}
    for r in train:
        assert r["mfu"] is None and r["peak_flops"] is None  # no known peak on CPU
        assert r["peak_mem_kind"] == "process_peak_rss"
        assert r["flops"] <= r["flops_analytic"] * 1.1  # frozen parts need less backward than "everything trains"

    for r in (r for r in recs if r["kind"] == "data"):
        assert r["ratio_phase1"] == pytest.approx(r["samples_s"] / r["step_samples_s_phase1"])
    for r in (r for r in recs if r["kind"] == "generate"):
        assert r["decode_tok_s"] is None or r["decode_tok_s"] > 0
    assert {r["batch"] for r in recs if r["kind"] == "e2e"} == {1, 2}


def test_one_section_into_a_folder(tmp_path):
    assert main(["bench", "--smoke", "--only", "encoder", "--modes", "tiny", "--passes", "forward",
                 "--batch-sizes", "1", "--tag", "t", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("t-*.jsonl")
    recs = _records(path)
    assert [r["kind"] for r in recs] == ["env", "encoder"] and recs[0]["tag"] == "t"
    with pytest.raises(SystemExit):
        main(["bench", "--smoke", "--only", "nope", "--out", str(tmp_path)])
