"""The benchmark harness on the CPU build of vLLM (tiny model, small sizes), so it cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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


def _results(out):
    return json.loads((out / "results.json").read_text())


def _harness(tmp_path, out, *args, timeout=400):
    cmd = [sys.executable, "-m", "benchmarks.run", "--tiny", "--out", str(out), "--work", str(tmp_path / "work"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.engine
def test_gpu_script_tiny_runs_interleaved_rounds_and_resumes(tmp_path):
    """benchmarks/gpu/session4.sh on the CPU build: block A for real (two interleaved rounds of batchgen, the raw
    loop with batchgen's options in one process, two engines sharing the device), the other blocks checked by a
    dry run; a second call resumes and redoes nothing. A typo in the script fails here, not on the GPU."""
    import statistics
    import tarfile

    state, out = tmp_path / "s4", tmp_path / "out"
    env = {**os.environ, "S4_STATE": str(state), "OUT": str(out), "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    script = [ "bash", str(ROOT / "benchmarks" / "gpu" / "session4.sh"), "--tiny"]
    first = subprocess.run(script, capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    log = (out / "progress.log").read_text()
    for block in [*"RYVZQTKBGCDEFMHNP", "D2", "ST"]:
        assert f"{block} (dry run): exit 0" in log, log + (state / "logs" / f"{block}.log").read_text()
    order = [line.split("] ")[1].split(" ")[0].rstrip(":") for line in log.splitlines() if "exit" in line]
    assert order[:3] == ["N", "ST", "E"], order  # blocks run in the queue's order, not the file's
    assert "A: exit 0" in log, log + (state / "logs" / "A.log").read_text()[-3000:]

    runs = _results(state / "res" / "A")["results"]
    e2 = "batchgen e2 [runtime.engines_per_gpu=2]"
    assert [(r["round"], r["method"]) for r in runs] == [
        (1, "batchgen"), (1, "raw one call"), (1, "raw calls of 8"), (1, e2),
        (2, "batchgen"), (2, "raw calls of 8"), (2, "raw one call"), (2, e2)]  # the raw calls swap every round
    for r in runs:
        assert r["status"] == "ok" and r["rows"] == 16 and r["output_tokens"] == 16 * 8, r
    for r in runs:  # the raw loop ran on batchgen's engine options, read back from both engines
        if r["kind"] == "raw":
            assert r["options_diff"] == {} and r["engine_options"]["max_num_seqs"] == runs[0]["engine_options"]["max_num_seqs"]
    assert runs[3]["engine_options"]["engines_per_gpu"] == 2
    summary = {s["method"]: s for s in _results(state / "res" / "A")["summary"]}
    bg = summary["batchgen"]
    assert bg["runs"] == "2/2" and bg["req_s"] == pytest.approx(statistics.median(r["req_s"] for r in runs if r["method"] == "batchgen"))
    assert bg["x_raw"] == pytest.approx(bg["req_s"] / summary["raw one call"]["req_s"])
    table = (out / "table.md").read_text()
    assert all(m in table for m in ("raw one call", "raw calls of 8", e2)) and "min–max" in table
    with tarfile.open(out / "session4-call1.tgz") as tar:
        names = tar.getnames()
    assert "res/A/results.json" in names and "logs/D.log" in names and "res/all/table.md" in names
    assert any(n.endswith("log.tail") for n in names) and any(n.endswith("summary-bench-e1.json") for n in names)
    assert "vLLM run_batch, batchgen's options" in (state / "logs" / "D.log").read_text()  # D's schedule, dry

    second = subprocess.run(script, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    again = _results(state / "res" / "A")["results"]
    assert [(r["round"], r["method"], r["generate_s"]) for r in again] == [(r["round"], r["method"], r["generate_s"]) for r in runs]
    assert (out / "session4-call2.tgz").exists() and "[call 2" in (out / "progress.log").read_text()


@pytest.mark.engine
def test_harness_methods_on_a_sampled_workload(tmp_path):
    """SYN (n=4, temperature 0.8, a seed per row) through every kind of method: batchgen, its one-commit
    variant, the raw loop with batchgen's options and with vLLM's defaults, run_batch both ways."""
    import time

    out = tmp_path / "out"
    proc_started = time.time()
    proc = _harness(tmp_path, out, "-w", "SYN", "--rows", "12", "--rounds", "1",
                    "--methods", "batchgen,raw1,raw1d,runbatch,runbatcht,batchgen1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = {r["method"]: r for r in _results(out)["results"]}
    assert list(runs) == ["batchgen", "raw one call", "raw one call, vLLM defaults", "vLLM run_batch",
                          "vLLM run_batch, batchgen's options", "batchgen 1 commit"]
    for r in runs.values():
        assert r["status"] == "ok" and r["rows"] == 12 and r["errors"] == 0, r
        assert r["output_tokens"] == 12 * 4 * 8, r  # n=4 completions of 128 / 16 tokens each, for every method
        assert r["prompt_tokens"] == 12 * 16, r  # the same 16-token prompts (run_batch's through the chat template)
        assert r["req_s"] > 0 and r["engine_start_s"] > 0 and r["engine_options"]["max_num_seqs"]
        assert r["engine_options"]["kv_cache_tokens"] > 0, r  # read back from every kind of engine
    mine = runs["batchgen"]["engine_options"]
    assert runs["raw one call"]["options_diff"] == {} and runs["vLLM run_batch, batchgen's options"]["options_diff"] == {}
    # run_batch as a user runs it gets vLLM's plain engine defaults (not the LLM class's): what batchgen is measured against.
    assert runs["vLLM run_batch"]["engine_options"]["max_num_seqs"] == 128 != mine["max_num_seqs"]
    assert runs["batchgen 1 commit"]["parts"] == 1 and runs["batchgen"]["parts"] >= 1
    for method in ("batchgen", "batchgen 1 commit"):  # the time to the last commit includes the final one
        r = runs[method]
        assert r["generate_s"] < r["output_s"] < r["generate_s"] + 30, r
        assert r["req_s_output"] == pytest.approx(r["rows"] / r["output_s"])
    assert "req_s_output" not in runs["raw one call"]
    # Both loops record the host's CPU while generating (the tests run vLLM's engine core in-process; on a GPU
    # its EngineCore process is listed beside theirs).
    for method, own in (("batchgen", "batchgen"), ("raw one call", "raw loop")):
        mine_cpu = next(p for p in runs[method]["host_cpu"] if p["process"] == own)
        assert 0 < mine_cpu["busiest_thread"] <= mine_cpu["cores"] + 0.05, runs[method]["host_cpu"]
    assert "| raw loop " in (out / "runs.md").read_text()  # its busiest thread, per run
    for r in runs.values():  # each run's window on the wall clock: the harness's GPU samples are averaged over it
        assert r["ended_at"] - r["started_at"] == pytest.approx(r["generate_s"], abs=0.01), r
        assert r["started_at"] > proc_started and "gpu_busy" not in r  # no NVML on the CPU machine: no figure
    summary = {s["method"]: s for s in _results(out)["summary"]}
    assert summary["batchgen"]["x_run_batch"] == pytest.approx(runs["batchgen"]["req_s"] / runs["vLLM run_batch"]["req_s"])
    png = (out / "chart.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_harness_budget_resume_and_sigterm(tmp_path):
    """With the instant engine (no vLLM): runs that do not fit the budget are skipped and a --resume runs
    exactly those; SIGTERM mid-run keeps the finished runs and takes the running process group down."""
    import signal
    import time

    out = tmp_path / "out"
    base = ["-w", "S", "--rows", "16", "--methods", "batchgen", "--set", "runtime.engine=instant"]
    proc = _harness(tmp_path, out, *base, "--rounds", "2", "--budget", "1", "--first-guess", "5")
    assert [r["status"] for r in _results(out)["results"]] == ["skipped (budget)"] * 2, proc.stdout
    proc = _harness(tmp_path, out, *base, "--rounds", "3", "--resume")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    runs = _results(out)["results"]
    assert [(r["round"], r["status"]) for r in runs] == [(1, "ok"), (2, "ok"), (3, "ok")]
    assert len(_results(out)["meta"]["commands"]) == 2  # the meta of the first call is kept

    # Round 4 takes 16 s at 1 row/s: stop it in the middle.
    slow = [*base, "--set", "runtime.instant_rows_per_second=1", "--rounds", "4", "--resume"]
    cmd = [sys.executable, "-m", "benchmarks.run", "--tiny", "--out", str(out), "--work", str(tmp_path / "work"), *slow]
    harness = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    folder = tmp_path / "work" / "runs" / "out" / "S-16-r4-batchgen"
    deadline = time.monotonic() + 120
    while not (folder / "out" / "_batchgen").exists():
        assert time.monotonic() < deadline and harness.poll() is None
        time.sleep(0.2)
    harness.send_signal(signal.SIGTERM)
    assert harness.wait(timeout=60) == 1
    doc = _results(out)
    assert doc["meta"]["stopped"] == "SIGTERM" and [r["round"] for r in doc["results"]] == [1, 2, 3]
    leftover = [p for p in Path("/proc").glob("[0-9]*") if str(folder) in _cmdline(p)]
    assert leftover == []


def _cmdline(proc_dir) -> str:
    try:
        return (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.engine
def test_structured_workloads_tiny(tmp_path):
    """CH (choice + label scores) and JS (JSON schema) through batchgen and the raw loop with its options."""
    out = tmp_path / "out"
    proc = _harness(tmp_path, out, "-w", "CH", "-w", "JS", "--rows", "12", "--rounds", "1", "--methods", "batchgen,raw1",
                    timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _results(out)["results"]
    assert [(r["workload"], r["method"]) for r in rows] == [("CH, 12 rows", "batchgen"), ("CH, 12 rows", "raw one call"),
                                                           ("JS, 12 rows", "batchgen"), ("JS, 12 rows", "raw one call")]
    for r in rows:
        assert r["status"] == "ok" and r["rows"] == 12 and r["req_s"] > 0, r
    # The grammar ends each completion: a label is a few tokens, not max_tokens.
    ch = [r for r in rows if r["workload"].startswith("CH")]
    assert all(r["output_tokens"] < 12 * 8 for r in ch)
    assert {r["output_tokens"] for r in ch} and ch[1]["options_diff"] == {}
    runs = tmp_path / "work" / "runs" / out.name
    parts = pq.read_table(next(runs.glob("CH-12-r*-batchgen")) / "out" / "parts").to_pylist()
    assert {p["label"] for p in parts} <= {"positive", "negative", "mixed"} and all(p["label_scores"] for p in parts)
    js = pq.read_table(next(runs.glob("JS-12-r*-batchgen")) / "out" / "parts").to_pylist()
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


def test_roofline_names_the_limit_of_each_workload():
    """The calculator's arithmetic on known shapes: the 8B with 1024-token prompts is bound by prefill compute,
    the 0.6B by reading its KV cache during decode (hand-checked figures in docs/benchmarks.md)."""
    from benchmarks.roofline import main, roofline
    from benchmarks.workloads import WORKLOADS

    w1, s = roofline(WORKLOADS["W1"]), roofline(WORKLOADS["S"])
    assert w1.limit == "compute" and s.limit == "memory"
    # W1: 1024 prompt + 256 output tokens through 8.03B parameters, 2 FLOPs each, plus attention: ~19.6 TFLOP.
    assert w1.flops_per_row == pytest.approx(2 * 8.03e9 * 1280, rel=0.05)
    assert w1.max_req_s == pytest.approx(40.2, rel=0.02) and s.max_req_s == pytest.approx(861, rel=0.02)
    assert roofline(WORKLOADS["W3"]).flops_per_row < w1.flops_per_row  # its prefixes come from the cache
    assert main(["-w", "W1", "--req-s", "24", "--json"]) == 0


def test_raw_loop_gets_one_engine_of_the_whole_device():
    """The tuned raw loop copies batchgen's options as one engine with the whole GPU would have them: k engines'
    memory budget and the job's own KV size times k; a KV size batchgen derived for engines started together
    is dropped (one engine sizes its own by vLLM's profile)."""
    from benchmarks.options import differences, one_engine, tuned_engine

    base = {"max_num_seqs": 1024, "async_scheduling": True, "gpu_memory_utilization": 0.45, "cudagraph_capture_sizes": [1, 2]}
    derived = {**base, "kv_cache_memory_bytes": 30 << 30, "engines_per_gpu": 2, "mps": True,
               "shared_start": "together", "shared_kv_derived": True}
    assert one_engine(derived) == {"max_num_seqs": 1024, "async_scheduling": True, "gpu_memory_utilization": 0.9,
                                   "cudagraph_capture_sizes": [1, 2]}
    own = {**base, "kv_cache_memory_bytes": 8 << 30, "engines_per_gpu": 2, "shared_start": "together"}
    assert one_engine(own)["kv_cache_memory_bytes"] == 16 << 30
    llm = tuned_engine(derived, {"model": "m", "load_format": "dummy"})
    assert "kv_cache_memory_bytes" not in llm and llm["gpu_memory_utilization"] == 0.9 and llm["max_num_seqs"] == 1024
    assert differences({**base, "gpu_memory_utilization": 0.9}, derived) == {}


def test_compile_cache_parts_round_trip(tmp_path):
    """benchmarks/gpu/compile_cache.sh: $HOME's vLLM and Triton caches packed in parts the device tool returns
    (at most 15 MiB each), restored byte for byte into another home; too many parts are dropped, and it says so."""
    script = ROOT / "benchmarks" / "gpu" / "compile_cache.sh"
    home, out, fresh = tmp_path / "home", tmp_path / "out", tmp_path / "fresh"
    files = {".cache/vllm/torch_compile_cache/abc/rank_0_0/backbone/artifact": os.urandom(20 << 20),
             ".triton/cache/k1/kernel.cubin": os.urandom(1000)}
    for rel, data in files.items():
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        (home / rel).write_bytes(data)

    def run(*args: str, env: dict | None = None) -> str:
        done = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, check=True,
                              env={**os.environ, "S4_CACHE_HOME": str(home), **(env or {})})
        return done.stdout

    assert "packed in 2 part(s)" in run("pack", str(out))
    parts = sorted(out.iterdir())
    assert [p.name for p in parts] == ["compile-cache.tgz.00", "compile-cache.tgz.01"]
    assert all(p.stat().st_size <= 15 << 20 for p in parts)
    fresh.mkdir()
    assert "restored" in run("restore", str(out), env={"S4_CACHE_HOME": str(fresh)})
    assert {rel: (fresh / rel).read_bytes() == data for rel, data in files.items()} == {rel: True for rel in files}

    assert "not kept" in run("pack", str(out), env={"S4_CACHE_PARTS": "1"})
    assert not list(out.iterdir())
    assert "none in" in run("restore", str(out))
