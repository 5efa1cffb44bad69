"""Crash-resume on real processes: SIGKILL at several points, SIGTERM, then the same command resumes.

One job is interrupted again and again, each time at a different point, and finally completed:
no id missing, none twice, greedy outputs identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchgen.errors import EXIT_INTERRUPTED
from batchgen.job.load import validate
from batchgen.run.runner import RunOptions, Runner
from tests.conftest import ROOT, job_dict, write_job, write_shards
from tests.outputs import assert_each_id_once_as_users_read, temp_files

pytestmark = pytest.mark.engine
PROGRESS = re.compile(r"\[batchgen\] \S+: (\d+)/(\d+) rows")


class Run:
    """`batchgen run` in a subprocess, its stderr collected as it comes."""

    def __init__(self, job: Path, multiprocess_engine: bool = False, args: tuple[str, ...] = ()):
        env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1" if multiprocess_engine else "0"}
        self.proc = subprocess.Popen([sys.executable, "-m", "batchgen", "run", str(job), *args], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")), daemon=True)
        self._reader.start()

    def rows_done(self) -> int:
        found = [int(m[1]) for line in list(self.lines) if (m := PROGRESS.search(line))]
        return max(found, default=0)

    def wait_until(self, cond, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while not cond():
            assert self.proc.poll() is None, "run ended before the kill point:\n" + "".join(self.lines[-30:])
            assert time.monotonic() < end, "kill point not reached:\n" + "".join(self.lines[-30:])
            time.sleep(0.01)

    def kill(self, sig: int) -> int:
        self.proc.send_signal(sig)
        return self.finish(timeout=120)

    def finish(self, timeout: float = 300) -> int:
        """Wait for the run to end on its own; its exit code, with every line of its output read."""
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return rc


def committed(out: Path) -> list[dict]:
    files = part_files(out)
    return pa.concat_tables(pq.read_table(f, columns=["id", "text", "error"]) for f in files).to_pylist() if files else []


def part_files(out: Path) -> list[Path]:
    return sorted((out / "parts").glob("*.parquet"))


def n_parts(out: Path) -> int:
    return len(part_files(out))


def assert_no_duplicates(out: Path) -> list[dict]:
    """No id twice, through pyarrow here and through the readers users use (nothing else in parts/ or stats/)."""
    rows = committed(out)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "an id was committed twice"
    assert temp_files(out) == []
    assert assert_each_id_once_as_users_read(out) == len(rows)
    return rows


def resume_to_the_end(job: Path, out: Path, ids: list, reference: dict) -> None:
    """The same command once more, to the end: every id exactly once, each with the uninterrupted run's text."""
    run = Run(job)
    rc = run.finish()
    assert rc == 0, "".join(run.lines[-30:])
    final = assert_no_duplicates(out)
    assert sorted(r["id"] for r in final) == sorted(ids)
    assert {r["id"]: r["text"] for r in final} == reference


def test_kill_and_resume_exactly_once(tiny_model, tmp_path):
    ids = write_shards(tmp_path / "in", shards=2, rows=120, row_group=40)
    out = tmp_path / "out"
    base = job_dict(tiny_model, tmp_path / "in", out, sampling={"temperature": 0, "max_tokens": 48},
                    runtime={"window": 4, "progress": "lines", "progress_seconds": 0.2})
    # float32: the runs below batch rows differently (when they start, how busy the machine is), and bf16
    # rounding then flips a near-tied greedy token now and then (seen once in CI under load).
    base["model"]["dtype"] = "float32"
    job = tmp_path / "job.yaml"

    # Reference: the same job, uninterrupted, in a process of its own like the runs below.
    write_job(job, {**base, "output": {"path": str(tmp_path / "ref")}})
    run = Run(job)
    assert run.proc.wait(timeout=300) == 0, "".join(run.lines[-30:])
    reference = {r["id"]: r["text"] for r in committed(tmp_path / "ref")}
    assert sorted(reference) == sorted(ids)

    # 1) SIGKILL before the first commit: rows generated, nothing committed, nothing visible.
    write_job(job, {**base, "checkpoint": {"every_rows": 100000, "every_seconds": 3600}})
    run = Run(job)
    run.wait_until(lambda: run.rows_done() >= 10)
    assert run.kill(signal.SIGKILL) == -signal.SIGKILL
    assert committed(out) == []

    # 2) SIGKILL right after a commit.
    write_job(job, {**base, "checkpoint": {"every_rows": 20}})
    run = Run(job)
    run.wait_until(lambda: n_parts(out) >= 1)
    run.kill(signal.SIGKILL)
    after_2 = len(assert_no_duplicates(out))
    assert after_2 >= 1

    # 3) SIGKILL mid-part: after another commit, once more rows are finished than committed.
    parts_before = n_parts(out)
    run = Run(job)
    run.wait_until(lambda: n_parts(out) > parts_before)
    run.wait_until(lambda: run.rows_done() >= len(committed(out)) - after_2 + 5)
    run.kill(signal.SIGKILL)
    after_3 = len(assert_no_duplicates(out))
    assert after_3 > after_2

    # 4) SIGTERM (a spot notice), default multiprocess engine: finish in-flight rows, commit, exit 75.
    write_job(job, {**base, "checkpoint": {"every_rows": 1000, "every_seconds": 3600}})
    run = Run(job, multiprocess_engine=True)
    run.wait_until(lambda: run.rows_done() >= 12, timeout=180)
    seen = run.rows_done()
    assert run.kill(signal.SIGTERM) == EXIT_INTERRUPTED, "".join(run.lines[-20:])
    log = "".join(run.lines)
    assert "rerun the same command to resume" in log
    summaries = [json.loads(p.read_text()) for p in (out / "_batchgen").glob("summary-*.json")]
    assert any(s["interrupted"] for s in summaries)
    after_4 = len(assert_no_duplicates(out))
    # Everything finished before the signal was committed (the bar had shown `seen` rows this run).
    assert after_4 - after_3 >= seen
    assert not (out / "_SUCCESS.json").exists()

    # 5) The same command, to the end.
    write_job(job, base)
    resume_to_the_end(job, out, ids, reference)
    assert json.loads((out / "_SUCCESS.json").read_text())["complete"] is True


def test_sigterm_while_the_engine_starts_exits_75_and_leaves_no_process(tiny_model, tmp_path):
    """A spot notice during engine start (minutes on a GPU): exit 75 at once, nothing committed, and vLLM's
    engine-core process gone with it (it would hold the GPU's memory against the requeued task)."""
    import psutil

    write_shards(tmp_path / "in", shards=1, rows=10)
    out = tmp_path / "out"
    job = write_job(tmp_path / "job.yaml", job_dict(tiny_model, tmp_path / "in", out))
    run = Run(job, multiprocess_engine=True)
    me = psutil.Process(run.proc.pid)

    def command(p: psutil.Process) -> str:
        try:
            return " ".join(p.cmdline())
        except psutil.Error:  # a short-lived child gone, or a zombie not yet reaped, while we look
            return ""

    def engine_core_started() -> list:
        return [p for p in me.children(recursive=True) if "multiprocessing" in command(p)]

    run.wait_until(lambda: engine_core_started(), timeout=120)
    started = engine_core_started()
    assert not any("generating" in line or "rows/s" in line for line in run.lines), "the engine was already up"
    t0 = time.monotonic()
    rc = run.kill(signal.SIGTERM)
    log = "".join(run.lines)
    assert rc == EXIT_INTERRUPTED, log[-3000:]
    assert time.monotonic() - t0 < 60
    assert "while the engine was starting" in log and "rerun the same command to resume" in log
    gone, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, f"engine processes left behind: {[command(p) for p in alive]}"
    assert not any((out / "parts").glob("*.parquet"))


def test_changed_settings_refuse_resume_without_force(vllm_engine, tiny_model, tmp_path):
    write_shards(tmp_path / "in", shards=1, rows=10)
    job = tmp_path / "job.yaml"
    base = job_dict(tiny_model, tmp_path / "in", tmp_path / "out")
    spec = validate(base)
    Runner(spec, RunOptions(engine_factory=lambda _s: vllm_engine)).run()
    write_job(job, {**base, "sampling": {"temperature": 0, "max_tokens": 9}})
    from tests.conftest import run_cli

    res = run_cli("run", str(job))
    assert res.returncode == 2
    assert "sampling.max_tokens: 8 -> 9" in res.stderr and "--force" in res.stderr
    # Checkpoint and runtime settings do not change outputs: resuming with them changed is fine.
    write_job(job, {**base, "checkpoint": {"every_rows": 3}, "runtime": {"window": 2}})
    res = run_cli("run", str(job))
    assert res.returncode == 0, res.stderr


def test_structured_logprobs_job_killed_and_resumed_exactly_once(tiny_model, tmp_path):
    """A JSON-schema job with logprobs, SIGKILLed after a commit and again mid-part, then resumed: every id
    once, and texts, parsed JSON, errors and logprobs as an uninterrupted run's."""
    from tests.conftest import COMPACT_JSON
    from tests.test_structured import QA

    ids = write_shards(tmp_path / "in", shards=2, rows=40, row_group=20)
    out = tmp_path / "out"
    base = job_dict(tiny_model, tmp_path / "in", out, runtime={"window": 4, "progress": "lines", "progress_seconds": 0.2},
                    sampling={"temperature": 0, "max_tokens": 40, "structured": {"json_schema": QA}, "logprobs": 2},
                    checkpoint={"every_rows": 12})
    base["model"].update(dtype="float32", engine_kwargs=COMPACT_JSON)  # float32: see test_kill_and_resume_exactly_once
    job = tmp_path / "job.yaml"
    columns = ["id", "text", "parsed", "error", "logprobs", "cumulative_logprob"]

    def rows(folder: Path) -> dict[str, dict]:
        got = pa.concat_tables(pq.read_table(f, columns=columns) for f in part_files(folder)).to_pylist()
        assert len(got) == len({r["id"] for r in got}), "an id was committed twice"
        return {r["id"]: r for r in got}

    write_job(job, {**base, "output": {"path": str(tmp_path / "ref")}})
    ref = Run(job)
    assert ref.proc.wait(timeout=300) == 0, "".join(ref.lines[-30:])
    reference = rows(tmp_path / "ref")
    assert sorted(reference) == sorted(ids) and sum(r["parsed"] is not None for r in reference.values()) >= 10

    write_job(job, base)
    run = Run(job)
    run.wait_until(lambda: n_parts(out) >= 1)
    run.kill(signal.SIGKILL)
    first, parts_before = len(rows(out)), n_parts(out)  # the first run may have left more than one part
    run = Run(job)
    run.wait_until(lambda: n_parts(out) > parts_before and run.rows_done() >= len(rows(out)) - first + 5)
    run.kill(signal.SIGKILL)
    assert first < len(rows(out)) < len(ids)
    run = Run(job)
    assert run.proc.wait(timeout=300) == 0, "".join(run.lines[-30:])
    final = rows(out)
    assert sorted(final) == sorted(ids)
    for rid, r in final.items():
        want = reference[rid]
        assert (r["text"], r["parsed"], r["error"]) == (want["text"], want["parsed"], want["error"]), rid
        assert [t["token_id"] for t in r["logprobs"]] == [t["token_id"] for t in want["logprobs"]]
        assert [t["logprob"] for t in r["logprobs"]] == pytest.approx([t["logprob"] for t in want["logprobs"]], abs=1e-4)
