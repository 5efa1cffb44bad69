"""No engine process outlives a killed worker: kill -9 of `batchgen run` and of the node supervisor, on the real
multiprocess CPU engine (vLLM's default mode: an EngineCore process and its worker), and a rerun that ends
what an earlier run left running (and nothing else, not even a process that took over a recorded pid).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from batchgen.run.watchdog import Proc, end_processes, read_record
from batchgen.run.worklock import WorkerLock, worker_files
from tests.conftest import ROOT, job_dict, write_job, write_shards
from tests.outputs import assert_each_id_once_as_users_read, stats_rows
from tests.test_resume import Run


HOLD_LOCK = """
import sys
from pathlib import Path
from batchgen.run.worklock import WorkerLock
lock = WorkerLock.take(Path({state!r}), "/out", "w0")
print("locked" if lock.fd is not None else "not locked", flush=True)
sys.stdin.read()
lock.release()
"""


def orphan(seconds: int = 600) -> Proc:
    """A process that is nobody's child here (its shell exits at once), as an engine left by a killed run is."""
    out = subprocess.run(["sh", "-c", f"sleep {seconds} >/dev/null 2>&1 & echo $!"], capture_output=True, text=True, check=True)
    return Proc.of(psutil.Process(int(out.stdout)))


def gone_within(procs: list[Proc], timeout: float) -> float:
    """Seconds until none of `procs` runs; fails naming the survivors."""
    t0 = time.monotonic()
    while alive := [p for p in procs if p.live()]:
        assert time.monotonic() - t0 < timeout, f"still running after {timeout}s: {[(p.pid, p.cmd) for p in alive]}"
        time.sleep(0.1)
    return time.monotonic() - t0


def engine_tree(pid: int) -> list[Proc]:
    return [Proc.of(p) for p in psutil.Process(pid).children(recursive=True)]


def engine_of_node(node: int, index: int) -> int:
    for child in psutil.Process(node).children():
        try:
            args = child.cmdline()
        except psutil.Error:  # a child that ended (or is a zombie) while we look: not an engine
            continue
        if "--engine-of-node" in args and args[args.index("--engine-of-node") + 1] == str(index):
            return child.pid
    raise AssertionError(f"no engine e{index} under the supervisor")


def test_a_recycled_pid_is_never_ended_and_a_held_lock_is_left_alone(tmp_path):
    mine, stranger = orphan(), orphan()
    recycled = Proc(stranger.pid, stranger.started - 1000, "an engine that died; its pid now belongs to another")
    try:
        assert end_processes([mine, recycled], wait=2) == [mine]
        assert mine.live() is None and stranger.live() is not None

        # A second run of the same worker while the first (another process) holds the lock: the first's
        # processes stay.
        first = subprocess.Popen([sys.executable, "-c", HOLD_LOCK.format(state=str(tmp_path))], cwd=ROOT,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert first.stdout.readline() == "locked\n"
        _, record = worker_files(tmp_path, "/out", "w0")
        record.write_text(json.dumps({"processes": [stranger.__dict__]}))
        second = WorkerLock.take(tmp_path, "/out", "w0")
        assert second.fd is None and stranger.live() is not None
        first.kill()  # the first run is killed: its lock goes with it, its record stays
        first.wait(timeout=30)
        third = WorkerLock.take(tmp_path, "/out", "w0")  # what the record names is ended now
        assert third.fd is not None and stranger.live() is None
        third.release()
        assert not record.exists()
    finally:
        end_processes([mine, stranger], wait=1)


@pytest.mark.engine
def test_kill_9_of_a_run_ends_its_engine_and_a_rerun_ends_leftovers(tiny_model, tmp_path):
    ids = write_shards(tmp_path / "in", shards=1, rows=60)
    out, state = tmp_path / "out", tmp_path / "state"
    job = write_job(tmp_path / "job.yaml", job_dict(
        tiny_model, tmp_path / "in", out, sampling={"temperature": 0, "max_tokens": 48}, checkpoint={"every_rows": 10},
        runtime={"window": 4, "progress": "lines", "progress_seconds": 0.2}))
    args = ("--worker-id", "w0", "--state-dir", str(state))

    # 1) kill -9 mid-generation: vLLM's EngineCore (and its worker) end within seconds, stopped by the watchdog.
    run = Run(job, multiprocess_engine=True, args=args)
    run.wait_until(lambda: run.rows_done() >= 5, timeout=240)
    tree = engine_tree(run.proc.pid)
    assert any("VLLM::EngineCore" in p.cmd for p in tree), [p.cmd for p in tree]
    t0 = time.monotonic()
    assert run.kill(signal.SIGKILL) == -signal.SIGKILL
    took = time.monotonic() - t0 + gone_within(tree, timeout=15)
    _, record = worker_files(state, str(out), "w0")
    recorded = {p.pid for p in read_record(record)}
    assert {p.pid for p in tree if "VLLM" in p.cmd} <= recorded  # what a rerun would check, had the watchdog died too
    print(f"engine processes gone {took:.1f}s after the kill")

    # 2) A rerun finds processes its record names still running (planted: the engine of a run whose watchdog
    # was killed too), ends them before its engine starts, says so, and completes exactly once. A live process
    # whose pid the record names with another start time (a recycled pid) is not touched.
    leftover, stranger = orphan(), orphan()
    try:
        recycled = Proc(stranger.pid, stranger.started - 1000, "VLLM::EngineCore")
        record.write_text(json.dumps({"processes": [leftover.__dict__, recycled.__dict__]}))
        rerun = Run(job, args=args)
        assert rerun.finish() == 0, "".join(rerun.lines[-30:])
        log = "".join(rerun.lines)
        assert f"ended 1 process(es) that an earlier run of worker w0 left running ({record}), before starting the " \
               f"engine: pid {leftover.pid} (sleep 600)" in log
        assert leftover.live() is None and stranger.live() is not None
        assert assert_each_id_once_as_users_read(out, ids) == len(ids)
        assert not record.exists()  # a run that ended normally leaves no record
    finally:
        end_processes([leftover, stranger], wait=1)


@pytest.mark.engine
def test_kill_9_of_the_node_supervisor_leaves_no_process(tiny_model, tmp_path):
    """Two CPU engines (each a `batchgen run` with vLLM's EngineCore and worker) under a supervisor that is
    SIGKILLed while both generate, engine e0 with it (as `pkill -9 -f "batchgen run"` would): e1 gets SIGTERM
    (it commits, closes its engine and exits 75), e0's vLLM processes are ended by its watchdog; none survives."""
    # One engine can start 20 s or more before the other on 2 busy cores and then does ~30 rows/s alone: 3,000
    # rows keep it busy for 100 s, so both still generate when the second is up (600 rows once ran out first).
    write_shards(tmp_path / "in", shards=2, rows=1500)
    out = tmp_path / "out"
    job = write_job(tmp_path / "job.yaml", job_dict(
        tiny_model, tmp_path / "in", out, input={"unit_rows": 20}, sampling={"temperature": 0, "max_tokens": 48},
        checkpoint={"every_rows": 4}, runtime={"window": 4, "grace_seconds": 0, "num_engines": 2}))
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    with open(tmp_path / "node.log", "w") as log:
        node = subprocess.Popen([sys.executable, "-m", "batchgen", "run", str(job), "--worker-id", "node",
                                 "--state-dir", str(tmp_path / "state")], cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        t0 = time.monotonic()
        while len({r["worker"] for r in stats_rows(out)}) < 2:
            assert node.poll() is None, (tmp_path / "node.log").read_text()[-3000:]
            assert time.monotonic() - t0 < 300, "both engines did not commit in time"
            time.sleep(0.2)
        tree = engine_tree(node.pid)
        assert sum("VLLM::EngineCore" in p.cmd for p in tree) == 2, [p.cmd for p in tree]
        e0 = engine_of_node(node.pid, 0)
        t0 = time.monotonic()
        os.kill(node.pid, signal.SIGKILL)
        os.kill(e0, signal.SIGKILL)
        node.wait(timeout=30)
        took = time.monotonic() - t0 + gone_within(tree, timeout=60)
    finally:
        node.kill()
    assert_each_id_once_as_users_read(out)
    print(f"{len(tree)} processes of the node gone {took:.1f}s after the supervisor's kill")




@pytest.mark.gpu
@pytest.mark.skipif(shutil.which("nvidia-smi") is None, reason="needs an NVIDIA GPU and CUDA vLLM")
def test_kill_9_on_a_gpu_frees_the_gpu(tiny_model, tmp_path):
    """CUDA vLLM forks its EngineCore (the CPU build spawns it): the watchdog ends it there too, and the GPU
    lists no process of the killed run afterwards (its memory is free for the rerun)."""
    write_shards(tmp_path / "in", shards=1, rows=400)
    job = write_job(tmp_path / "job.yaml", job_dict(
        tiny_model, tmp_path / "in", tmp_path / "out", sampling={"temperature": 0, "max_tokens": 256},
        runtime={"window": 4, "progress": "lines", "progress_seconds": 0.2}))
    run = Run(job, multiprocess_engine=True, args=("--state-dir", str(tmp_path / "state")))
    run.wait_until(lambda: run.rows_done() >= 4, timeout=600)
    tree = engine_tree(run.proc.pid)
    assert any("VLLM::EngineCore" in p.cmd for p in tree), [p.cmd for p in tree]
    run.kill(signal.SIGKILL)
    took = gone_within(tree, timeout=30)
    on_gpu = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert not {str(p.pid) for p in tree} & set(on_gpu), on_gpu
    print(f"GPU engine processes gone {took:.1f}s after the kill")
