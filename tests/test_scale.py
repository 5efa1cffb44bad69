"""Scale-out on one node and across static ranks, on the real CPU vLLM engine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from batchgen.errors import SpecError
from batchgen.job.load import validate
from batchgen.node.supervisor import NodeRun, child_command, engine_env, engine_layout
from batchgen.run.runner import RunOptions, Runner
from batchgen.job.spec import ModelSpec, RuntimeSpec
from tests.conftest import ROOT, job_dict, write_job, write_shards
from tests.outputs import current_leases, stats_rows, texts_each_id_once


def engine_workers(out: Path) -> set[str]:
    return {r["worker"] for r in stats_rows(out)}


def engine_pids(supervisor: int) -> dict[int, int]:
    """Engine index -> pid, from the command lines of the supervisor's children."""
    pids = {}
    for pid in Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split():
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if b"--engine-of-node" in args:
            pids[int(args[args.index(b"--engine-of-node") + 1])] = int(pid)
    return pids


def until(what: str, cond, proc: subprocess.Popen, timeout: float = 240):
    t0 = time.monotonic()
    while not (value := cond()):
        assert proc.poll() is None, f"exited ({proc.returncode}) before: {what}"
        assert time.monotonic() - t0 < timeout, f"timed out waiting for: {what}"
        time.sleep(0.1)
    return value


# -- layout and pinning ------------------------------------------------------------------------------
@pytest.mark.parametrize("runtime, tp, gpus, expected", [
    ({}, 1, [], (1, ((),))),
    ({"num_engines": 3}, 1, [], (3, ((), (), ()))),
    ({}, 1, ["0", "1"], (2, (("0",), ("1",)))),
    ({}, 2, ["0", "1", "2", "3", "4"], (2, (("0", "1"), ("2", "3")))),
    ({"gpus_per_engine": 4}, 1, [str(i) for i in range(8)], (2, (("0", "1", "2", "3"), ("4", "5", "6", "7")))),
    ({"num_engines": 1}, 1, ["0", "1"], (1, (("0",),))),
    ({}, 1, ["GPU-aa", "GPU-bb"], (2, (("GPU-aa",), ("GPU-bb",)))),
    ({}, 4, ["0", "1"], (1, (("0", "1"),))),  # one engine: left to vLLM to refuse if it must
])
def test_engine_layout(runtime, tp, gpus, expected):
    layout = engine_layout(RuntimeSpec(**runtime), ModelSpec(path="m", tensor_parallel_size=tp), gpus)
    assert (layout.num_engines, layout.groups) == expected


def test_engine_layout_refuses_more_gpus_than_visible():
    with pytest.raises(SpecError, match="at most 2"):
        engine_layout(RuntimeSpec(num_engines=3), ModelSpec(path="m"), ["0", "1"])


def test_engines_are_pinned_and_run_the_same_job(tmp_path):
    assert engine_env({"PATH": "/bin"}, ("2", "3"), [0])["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in engine_env({}, ("2",), [0])
    assert engine_env({}, (), [4, 5])["VLLM_CPU_OMP_THREADS_BIND"] == "4,5"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in engine_env({}, (), [])  # runtime.cpu_affinity: off
    assert engine_env({"VLLM_CPU_OMP_THREADS_BIND": "all"}, (), [4, 5])["VLLM_CPU_OMP_THREADS_BIND"] == "all"

    spec = validate(job_dict(Path("/m"), tmp_path, tmp_path / "out", runtime={"metrics_textfile": "/x/batchgen.prom"}))
    run = NodeRun(job=Path("job.yaml"), flags={"max_tokens": 64, "model": "/models/a b"}, sets=["runtime.window=8"],
                  rank=2, world_size=4, worker="host-r2", env={}, python="py")
    cmd = child_command(run, spec, 1)
    assert cmd[:5] == ["py", "-m", "batchgen", "run", "job.yaml"]
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    assert sets[:3] == ["sampling.max_tokens=64", 'model.path="/models/a b"', "runtime.window=8"]
    assert "runtime.num_engines=1" in sets and 'runtime.metrics_textfile="/x/batchgen-e1.prom"' in sets
    flags = dict(zip(cmd, cmd[1:]))
    assert (flags["--rank"], flags["--world-size"], flags["--worker-id"], flags["--engine-of-node"]) == ("2", "4", "host-r2-e1", "1")


# -- real engines ------------------------------------------------------------------------------------
@pytest.mark.engine
def test_static_ranks_split_the_job_and_the_last_writes_success(vllm_engine, tiny_model, tmp_path):
    write_shards(tmp_path / "in", shards=3, rows=20, row_group=10)
    base = job_dict(tiny_model, tmp_path / "in", tmp_path / "one", input={"unit_rows": 10})
    Runner(validate(base), RunOptions(engine_factory=lambda _s: vllm_engine)).run()
    one = texts_each_id_once(tmp_path / "one")

    spec = validate({**base, "output": {"path": str(tmp_path / "two")}})
    first = Runner(spec, RunOptions(rank=1, world_size=2, worker="r1", engine_factory=lambda _s: vllm_engine)).run()
    assert not first.complete and not (tmp_path / "two" / "_SUCCESS.json").exists()
    assert first.counters.rows == 30  # 6 units of 10 rows: 3 each
    last = Runner(spec, RunOptions(rank=0, world_size=2, worker="r0", engine_factory=lambda _s: vllm_engine)).run()
    assert last.complete
    assert '"by": "r0"' in (tmp_path / "two" / "_SUCCESS.json").read_text()
    assert texts_each_id_once(tmp_path / "two") == one


@pytest.mark.engine
def test_engines_of_a_node_match_one_engine_survive_a_crash_and_resume(tiny_model, tmp_path):
    """3 engine processes: one is SIGKILLed holding a lease (the others take its units), then the node gets
    SIGTERM (exit 75); a rerun with 2 engines finishes the job, identical to one engine's output."""
    # 480 rows: on CI's 2 busy cores one engine has started 18 s before another, at ~15 rows/s an engine.
    ids = write_shards(tmp_path / "in", shards=4, rows=120, row_group=10)
    # Small windows and longer answers: the job must still be running when the node is stopped. float32:
    # the engines batch rows differently, and bf16 rounding then flips near-tied greedy tokens now and then.
    sections = {"input": {"unit_rows": 20}, "sampling": {"max_tokens": 16}, "checkpoint": {"every_rows": 10},
                "runtime": {"window": 16, "grace_seconds": 0, "progress": "lines", "progress_seconds": 1}}

    def float32_job(path: Path, out: Path) -> Path:
        job = job_dict(tiny_model, tmp_path / "in", out, **sections)
        job["model"]["dtype"] = "float32"
        return write_job(path, job)

    reference = float32_job(tmp_path / "one.yaml", tmp_path / "one")
    done = subprocess.run([sys.executable, "-m", "batchgen", "run", str(reference), "--set", "runtime.num_engines=1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    one = texts_each_id_once(tmp_path / "one", ids)
    out = tmp_path / "node"
    job = float32_job(tmp_path / "job.yaml", out)

    cmd = [sys.executable, "-m", "batchgen", "run", str(job), "--worker-id", "node"]
    t0 = time.monotonic()
    first = subprocess.Popen([*cmd, "--set", "runtime.num_engines=3"], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(iter(first.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        until("two engines committing", lambda: len(engine_workers(out)) >= 2, first)
        unit, lease = until("an engine holding a lease", lambda: next(
            ((u, lease) for u, lease in current_leases(out).items() if lease["state"] == "held"), None), first)
        victim = int(lease["owner"].rsplit("-e", 1)[1])
        os.kill(engine_pids(first.pid)[victim], signal.SIGKILL)
        until("its leases released", lambda: any(f"released the leases of e{victim}" in line for line in log), first)
        until("its unit taken over", lambda: current_leases(out)[unit]["owner"] != lease["owner"], first)
        first.send_signal(signal.SIGTERM)  # now stop the node, as a scheduler would
        first.wait(timeout=120)
        stdout = first.stdout.read()
        reader.join(timeout=10)
    finally:
        first.kill()
    stderr = "".join(log)
    assert first.returncode == 75, stdout + stderr[-3000:]
    assert f"engine e{victim} failed (killed by SIGKILL); the other engines take over its units" in stderr
    assert "SIGTERM: forwarding to 2 engines" in stderr
    assert "interrupted (rerun to resume)" in stdout and f"  e{victim}  node-e{victim}: killed by SIGKILL" in stdout
    done_before = len(pq.read_table(out / "parts", columns=["id"]))
    assert 0 < done_before < len(ids)

    second = subprocess.run([*cmd, "--set", "runtime.num_engines=2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr[-3000:]
    assert "batchgen summary [test / node]: complete" in second.stdout
    assert f"{len(ids) - done_before} generated this run" in second.stdout
    assert (out / "_SUCCESS.json").exists()
    assert texts_each_id_once(out, ids) == one
    assert len(engine_workers(out)) >= 2
    print(f"3 engines then 2 engines: {time.monotonic() - t0:.0f}s")


def test_node_time_runs_from_the_first_engine_start_to_the_last_end():
    from batchgen.node.view import engine_line, node_summary
    from batchgen.run.stats import Counters, Summary

    def summary(worker: str, start: float, end: float, rows: int) -> Summary:
        return Summary(job="j", worker=worker, model="m", engine="vllm", engine_version="0", device="gpu", units=1,
                       rows_total=rows, rows_skipped=0, counters=Counters(rows=rows), generate_seconds=end - start,
                       generate_started_at=start, generate_ended_at=end, output_ended_at=end + 1.5)

    base = Summary(job="j", worker="n", model="m", engine="vllm", engine_version="-", device="-", units=2,
                   rows_total=300, rows_skipped=0)
    # e1 became ready 5 s after e0; both ended together: the node generated for 25 s, not 20.
    parts = [summary("e0", 1000.0, 1025.0, 160), summary("e1", 1005.0, 1025.0, 140)]
    node = node_summary(base, parts, 2)
    assert node.generate_seconds == 25.0 and node.counters.rows == 300
    assert node.as_dict()["rows_per_second"] == 12.0
    assert node.output_ended_at == 1026.5  # the node's output is complete when its last engine's last part is
    assert "generating" in engine_line(1, "e1", 0, parts[1])
