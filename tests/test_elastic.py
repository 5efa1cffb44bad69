"""Elastic workers on the real CPU engine: started at different times, killed, paused into zombies.

Each worker is a `batchgen run` process, as on a spot fleet. Whatever happens to them, the job
ends complete with each id exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT, job_dict, write_job, write_shards
from tests.outputs import committed_units, current_leases, texts_each_id_once

pytestmark = pytest.mark.engine


def start(job: Path, worker: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "batchgen", "run", str(job), "--worker-id", worker, *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return proc.returncode, out, err


def committed_rows(out: Path, unit: str) -> int:
    return sum(pq.read_metadata(p).num_rows for p in (out / "parts").glob(f"{unit}.*.parquet"))


def mid_unit(out: Path, worker: str, unit_rows: int = 20) -> str | None:
    """A unit `worker` holds a live lease on and has committed part of, but not all."""
    parts = committed_units(out, worker)
    for unit, lease in current_leases(out).items():
        if lease["owner"] == worker and lease["state"] == "held" and unit in parts and committed_rows(out, unit) < unit_rows:
            return unit
    return None


def pause_mid_unit(proc: subprocess.Popen, out: Path, worker: str, others: list[subprocess.Popen]) -> str:
    """SIGSTOP `proc` while it is in the middle of a unit (checked again once it is stopped)."""
    for _ in range(20):
        unit = wait_for(f"{worker} mid-unit", lambda: mid_unit(out, worker), [proc, *others])
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(0.2)  # a commit under way lands
        if mid_unit(out, worker) == unit:
            return unit
        os.kill(proc.pid, signal.SIGCONT)
    raise AssertionError(f"never caught {worker} in the middle of a unit")


def wait_for(what: str, cond: Callable[[], object], procs: list[subprocess.Popen], timeout: float = 240) -> object:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = cond()
        if value:
            return value
        for p in procs:
            assert p.poll() is None, f"a worker exited ({p.returncode}) before: {what}\n{p.communicate()[1][-3000:]}"
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {what}")


def test_elastic_workers_survive_a_kill_and_a_zombie(tiny_model, tmp_path):
    """A and B start 3 s apart. A is paused (SIGSTOP) mid-unit and B killed (SIGKILL) mid-unit, both holding
    leases; C starts later and takes both units over once the leases expire. A then resumes as a zombie on a
    unit C has taken: it must notice the loss, and its commits must not duplicate C's rows."""
    ids = write_shards(tmp_path / "in", shards=4, rows=60, row_group=10)
    out = tmp_path / "out"
    job = write_job(tmp_path / "job.yaml", job_dict(
        tiny_model, tmp_path / "in", out, input={"unit_rows": 20}, sampling={"max_tokens": 32},
        checkpoint={"every_rows": 5}, runtime={"elastic": True, "lease_seconds": 4, "window": 4}))
    t0 = time.monotonic()
    a = start(job, "A")
    time.sleep(3)
    b = start(job, "B")
    try:
        zombie_unit = pause_mid_unit(a, out, "A", [b])
        print(f"A paused: {time.monotonic() - t0:.0f}s")
        killed_unit = wait_for("B mid-unit", lambda: mid_unit(out, "B"), [b])
        b.kill()
        b.wait()
        killed_gen = current_leases(out)[killed_unit]["gen"]
        c = start(job, "C")
        print(f"B killed, C started: {time.monotonic() - t0:.0f}s")
        # C takes A's unit over (A's lease expired while it was paused) and commits some of it.
        wait_for("C working on A's unit", lambda: zombie_unit in committed_units(out, "C"), [c], timeout=300)
        os.kill(a.pid, signal.SIGCONT)
        print(f"A resumed: {time.monotonic() - t0:.0f}s")
        rc_c, out_c, err_c = finish(c)
        rc_a, out_a, err_a = finish(a)
        print(f"A and C done: {time.monotonic() - t0:.0f}s")
    finally:
        for p in (a, b):
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
    assert rc_c == 0, err_c[-3000:]
    assert rc_a == 0, err_a[-3000:]
    # An elastic worker exits 0 only once the whole job is committed.
    assert "batchgen summary [test / C]: complete" in out_c and "batchgen summary [test / A]: complete" in out_a
    assert (out / "_SUCCESS.json").exists()
    texts_each_id_once(out, ids)

    # C took A's units while A was paused; B's units went to whoever came to them first (C, or A once resumed).
    assert "taking over the lease of A (expired)" in err_c
    assert "taking over the lease of B (expired)" in err_c + err_a
    leases = current_leases(out)
    assert leases[killed_unit]["gen"] > killed_gen and leases[killed_unit]["owner"] != "B"
    assert all(lease["state"] == "done" for lease in leases.values())
    # A was a zombie on its unit: told so by its heartbeat, and its late commits were merged, not duplicated.
    assert f"lost the lease of unit {zombie_unit}" in err_a
    assert f"of unit {zombie_unit} was written by another worker; merging" in err_a
    print(f"elastic: {time.monotonic() - t0:.0f}s")


def test_two_static_workers_on_the_same_units_leave_each_id_once(tiny_model, tmp_path):
    """A task requeued while its first incarnation still runs: both generate the same rows; commits merge."""
    ids = write_shards(tmp_path / "in", shards=2, rows=40, row_group=10)
    out = tmp_path / "out"
    job = write_job(tmp_path / "job.yaml", job_dict(tiny_model, tmp_path / "in", out, checkpoint={"every_rows": 7}))
    procs = [start(job, name, "--rank", "0", "--world-size", "1") for name in ("Z1", "Z2")]
    results = [finish(p) for p in procs]
    for rc, _out, err in results:
        assert rc == 0, err[-3000:]
    texts_each_id_once(out, ids)
    assert any("was written by another worker; merging" in err for _rc, _out, err in results)
    assert (out / "_SUCCESS.json").exists()
