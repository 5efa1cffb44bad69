"""examples/slurm on a real one-node SLURM cluster (slurmctld + slurmd + munged, from tests/slurm/up.sh).

An array job of two batchgen tasks on the tiny model; one task gets SIGTERM mid-run (as on
preemption), commits, exits 75, requeues itself and resumes. The job ends with each id once.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, job_dict, write_job, write_shards
from tests.outputs import committed_units, texts_each_id_once

pytestmark = pytest.mark.engine
SCRIPT = ROOT / "examples" / "slurm" / "batchgen-array.sbatch"


def _sh(*cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _controller_up() -> bool:
    try:
        return "UP" in _sh("scontrol", "ping", timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def slurm_cluster():
    """Start the test cluster (idempotent); stop it afterwards only if this session started it."""
    if os.geteuid() != 0:
        pytest.fail("the SLURM tests start slurmctld/slurmd/munged and need root (CI runs as root)")
    was_up = _controller_up()
    up = _sh("bash", str(ROOT / "tests" / "slurm" / "up.sh"), timeout=600)
    if up.returncode != 0:
        pytest.fail(f"tests/slurm/up.sh failed (exit {up.returncode}):\n{up.stdout}\n{up.stderr[-4000:]}")
    yield up.stdout.strip()
    if not was_up:
        _sh("bash", str(ROOT / "tests" / "slurm" / "down.sh"), timeout=120)


def wait_until(what: str, cond, timeout: float, logs: Path) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            tails = "\n".join(f"--- {p.name}\n{p.read_text()[-2500:]}" for p in sorted(logs.glob("slurm-*.log")))
            queue = _sh("squeue", "-a").stdout
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for: {what}\n{queue}\n{tails}")
        time.sleep(0.5)


def test_array_job_with_preempted_task_requeued(slurm_cluster, tiny_model, tmp_path):
    ids = write_shards(tmp_path / "in", shards=4, rows=100, row_group=10)
    out = tmp_path / "out"
    job = write_job(tmp_path / "job.yaml", job_dict(
        tiny_model, tmp_path / "in", out, input={"unit_rows": 50}, sampling={"max_tokens": 16},
        checkpoint={"every_rows": 10}, runtime={"window": 8, "grace_seconds": 2}))
    env = {**os.environ, "BATCHGEN_CMD": f"{sys.executable} -m batchgen"}
    t0 = time.monotonic()
    sub = subprocess.run(["sbatch", "--parsable", "--array=0-1", "--cpus-per-task=1", "--job-name=batchgen-test",
                          f"--chdir={tmp_path}", f"--output={tmp_path}/slurm-%a.log", str(SCRIPT), str(job)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip().split(";")[0]
    try:
        # Rank 1 (host-r1, the script's default worker id) commits a first part: preempt it now.
        rank1 = f"{socket.gethostname()}-r1"
        wait_until("task 1 to commit a part", lambda: committed_units(out, rank1), 180, tmp_path)
        cancel = _sh("scancel", "--signal=TERM", "--full", f"{job_id}_1")
        assert cancel.returncode == 0, cancel.stderr
        t_signal = time.monotonic()
        wait_until("the array job to finish", lambda: _sh("squeue", "-h", "-j", job_id).stdout.strip() == "", 240, tmp_path)
    finally:
        _sh("scancel", job_id)
    elapsed = time.monotonic() - t0

    log0, log1 = (tmp_path / "slurm-0.log").read_text(), (tmp_path / "slurm-1.log").read_text()
    assert "attempt 1" in log0 and "done: this task's share is committed" in log0 and "attempt 2" not in log0
    # Task 1: interrupted with exit 75, requeued by the script, resumed with work left, done.
    assert "[batchgen] WARNING SIGTERM: no new rows" in log1
    assert "interrupted (exit 75): requeueing" in log1
    first, second = log1.split("attempt 2", 1)
    assert "stopped on a signal after committing" in first
    summary = next(line for line in second.splitlines() if line.startswith("  rows "))
    generated, skipped = int(summary.split()[1]), int(summary.split(" errors, ")[1].split()[0])
    assert generated > 0 and skipped > 0 and generated + skipped == 200, summary
    assert "done: this task's share is committed" in second

    texts_each_id_once(out, ids)
    assert (out / "_SUCCESS.json").exists()
    print(f"slurm: {elapsed:.0f}s (requeued task done {time.monotonic() - t_signal:.0f}s after SIGTERM)")
