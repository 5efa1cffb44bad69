"""The benchmark harness on the CPU build of vLLM (tiny model, small sizes), so it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from benchmarks.synth import prompt_texts, write_model_folder, write_prompts
from benchmarks.workloads import select
from tests.conftest import ROOT


def test_prompts_have_exact_lengths_and_shared_prefixes(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    wl = select("W3", rows=120, tiny_from=tiny_model)
    tok = AutoTokenizer.from_pretrained(write_model_folder(wl.shape, tmp_path / "model"))
    ids = tok(prompt_texts(wl), add_special_tokens=True)["input_ids"]
    assert {len(x) for x in ids} == {wl.prompt_tokens}
    prefixes = {tuple(x[: wl.prefix_tokens]) for x in ids}
    assert len(prefixes) == wl.prefixes
    table = pq.read_table(write_prompts(wl, tmp_path / "w3.parquet"))
    assert table.num_rows == 120 and len(table.column("id").unique()) == 120


@pytest.mark.engine
def test_harness_tiny_end_to_end(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "benchmarks.run", "--tiny", "--workload", "S", "--rows", "24", "--chunk", "8",
           "--out", str(out), "--work", str(tmp_path / "work"), "--timeout", "150"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    rows = json.loads((out / "results.json").read_text())["results"]
    assert [r["method"] for r in rows] == ["raw one call", "raw calls of 8", "batchgen"]
    for r in rows:
        assert r["status"] == "ok" and r["rows"] == 24
        assert r["req_s"] > 0 and r["out_tok_s"] > 0 and r["engine_start_s"] > 0
        assert r["output_tokens"] == 24 * 8  # ignore_eos: every row makes exactly 128 / 16 tokens
        assert 0 <= r["cache_hit"] <= 1
    assert rows[0]["x_raw"] == pytest.approx(1.0)
    assert rows[2]["parts"] >= 1 and rows[2]["wall_s"] > 0

    table = (out / "table.md").read_text()
    assert all(m in table for m in ("raw one call", "raw calls of 8", "batchgen"))
    assert pq.read_table(out / "results.parquet").num_rows == 3
    png = (out / "chart.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(str(out / "chart.png")).shape[0] > 100


@pytest.mark.engine
def test_structured_workloads_tiny(tmp_path):
    """CH (choice + label scores) and JS (JSON schema) through the raw loop and batchgen, same options."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "benchmarks.run", "--tiny", "--workload", "CH", "--workload", "JS", "--rows", "12",
           "--methods", "raw1,batchgen", "--out", str(out), "--work", str(tmp_path / "work"), "--timeout", "200"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())["results"]
    assert [(r["workload"], r["method"]) for r in rows] == [("CH", "raw one call"), ("CH", "batchgen"),
                                                           ("JS", "raw one call"), ("JS", "batchgen")]
    for r in rows:
        assert r["status"] == "ok" and r["rows"] == 12 and r["req_s"] > 0 and r["x_raw"] > 0
    # The grammar ends each completion: a label is a few tokens, not max_tokens.
    ch = [r for r in rows if r["workload"] == "CH"]
    assert all(r["output_tokens"] < 12 * 8 for r in ch)
    parts = pq.read_table(tmp_path / "work" / "runs" / "CH-batchgen" / "out" / "parts").to_pylist()
    assert {p["label"] for p in parts} <= {"positive", "negative", "mixed"} and all(p["label_scores"] for p in parts)
    js = pq.read_table(tmp_path / "work" / "runs" / "JS-batchgen" / "out" / "parts").to_pylist()
    assert all(p["parsed"] is not None or p["error"].startswith("invalid JSON") for p in js)


def test_hostcost_instant_engine(tmp_path):
    result = tmp_path / "host.json"
    cmd = [sys.executable, "-m", "benchmarks.hostcost", "--rows", "3000", "--prompt-tokens", "16", "--row-group", "1000",
           "--work", str(tmp_path / "work"), "--out", str(result)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(result.read_text())
    assert r["rows"] == 3000 and r["errors"] == 0 and r["rows_per_cpu_s"] > 0
    assert r["first_step_after_ready_s"] < 2.0


def test_scaleout_paced_engines(tmp_path):
    """Two paced instant engines as a real node (supervisor, leases, parts): every row once, and no engine
    beats its pace (the pace is what makes N x one engine the ceiling)."""
    result = tmp_path / "scale.json"
    cmd = [sys.executable, "-m", "benchmarks.scaleout", "--rows", "1200", "--engines", "1,2", "--rate", "600",
           "--prompt-tokens", "16", "--unit-rows", "200", "--work", str(tmp_path / "work"), "--out", str(result)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one, two = json.loads(result.read_text())["results"]
    assert (one["engines"], two["engines"]) == (1, 2)
    assert one["rows"] == two["rows"] == 1200 and one["vs_1_engine"] == 1.0
    assert len(two["per_engine_rows_per_s"]) == 2 and two["vs_1_engine"] > 0
    for r in (one, two):
        assert max(r["per_engine_rows_per_s"]) <= 600 * 1.02, r
        assert r["window_s"] >= 1200 / 600 / r["engines"] * 0.98, r
    out = tmp_path / "work" / "runs" / "scaleout-1200-e2" / "out"
    from tests.outputs import texts_each_id_once

    texts_each_id_once(out, [f"r{i:09d}" for i in range(1200)])
    assert "| 2 |" in result.with_suffix(".md").read_text()


def test_idscan_benchmark_finds_what_it_planted(tmp_path):
    from benchmarks.idscan import measure, write_shard

    write_shard(tmp_path / "d.parquet", 20_000, "dupint")
    seconds, rows, _, found = measure(tmp_path / "d.parquet")
    assert rows == 20_000 and seconds > 0
    assert found.startswith("3 duplicate id(s) in 6 rows: 0 2 times (d.parquet row 0, d.parquet row 19997)")
