"""`batchgen status` on a job killed half way (SIGKILL: no summary, no flush), then resumed to completion."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
from typer.testing import CliRunner

from batchgen.cli import app
from batchgen.job.load import load_job
from batchgen.run.runner import RunOptions, Runner
from batchgen.ops.status import job_status, render_text
from tests.conftest import ROOT, job_dict, write_job, write_shards


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def start_run(job, worker: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "batchgen", "run", str(job), "--worker-id", worker], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_parts(out, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (out / "stats").is_dir() and any((out / "stats").iterdir()):
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before a part was committed: {proc.stderr.read()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError("no part committed in time")


def test_status_of_a_killed_job_then_resumed(vllm_engine, tiny_model, tmp_path):
    ids = write_shards(tmp_path / "in", shards=3, rows=40, row_group=20)
    out = tmp_path / "out"
    job = write_job(tmp_path / "job.yaml", job_dict(
        tiny_model, tmp_path / "in", out, sampling={"temperature": 0, "max_tokens": 48},
        input={"unit_rows": 20}, checkpoint={"every_rows": 8, "every_seconds": 5}, runtime={"window": 4, "order_by_prefix": False}))

    proc = start_run(job, "w0")
    try:
        wait_for_parts(out, proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    result = invoke("status", str(job), "--json")
    assert result.exit_code == 0, result.output
    st = json.loads(result.output)
    committed = len(pq.read_table(out / "parts").column("id"))
    assert st["complete"] is False and st["rows_total"] == 120
    assert 0 < st["rows"] == committed < 120, "status counts exactly the committed rows"
    assert st["units_done"] < len(st["units"]) == 6
    states = {u["state"] for u in st["units"]}
    assert "pending" in states and states & {"partial", "done"}
    (w,) = st["workers"]
    assert w["worker"] == "w0" and w["rows"] == committed and w["parts"] >= 1
    assert w["state"] == "running"  # just killed: it committed moments ago and left no summary
    assert w["rows_per_second"] > 0 and w["last_commit"] <= time.time()

    # An hour later the silence says what happened.
    later = job_status(load_job(job), now=time.time() + 3600)
    assert later.workers[0].state.startswith("no commit for 1h00m: killed or stuck?")
    text = "\n".join(render_text(later))
    assert f"job test: incomplete, {committed}/120 rows committed" in text
    assert "pending" in text and "killed or stuck?" in text

    result = invoke("validate", str(job), "--no-engine-check")
    assert f"resume: {committed} rows already committed" in result.output
    assert f"a run would generate {120 - committed}" in result.output

    # Resume in-process under the same worker name (a wider window: runtime settings may change on
    # resume), then status says complete and finished.
    summary = Runner(load_job(job, sets=["runtime.window=64"]), RunOptions(worker="w0", engine_factory=lambda _s: vllm_engine)).run()
    assert summary.complete and summary.rows_skipped == committed
    done = json.loads(invoke("status", str(job), "--json").output)
    assert done["complete"] is True and done["rows"] == 120 and done["units_done"] == 6
    assert done["workers"][0]["state"] == "finished, job complete"
    assert sorted(pq.read_table(out / "parts").column("id").to_pylist()) == sorted(ids)
    text = invoke("status", str(job)).output
    assert text.startswith("job test: complete, 120/120 rows committed (100.0%)")


def test_status_counts_parts_whose_stats_were_lost(vllm_engine, tiny_model, tmp_path):
    """A kill between a part and its stats file: the part itself is counted (never under-report)."""
    write_shards(tmp_path / "in", shards=1, rows=20)
    job = write_job(tmp_path / "job.yaml", job_dict(tiny_model, tmp_path / "in", tmp_path / "out",
                                                    checkpoint={"every_rows": 5}, runtime={"window": 5}))
    Runner(load_job(job), RunOptions(worker="w3", engine_factory=lambda _s: vllm_engine)).run()
    stats = sorted((tmp_path / "out" / "stats").iterdir())
    assert len(stats) >= 2
    stats[0].unlink()
    # A kill between the part's link and the temporary's unlink leaves `.tmp-<uuid>-<part name>` behind.
    part = sorted((tmp_path / "out" / "parts").iterdir())[0]
    (part.parent / f".tmp-0123abcd-{part.name}").write_bytes(part.read_bytes())
    st = job_status(load_job(job))
    assert st.rows == 20 and st.complete and st.workers[0].worker == "w3"
    assert st.workers[0].parts == len(stats)
    assert [u.unit for u in st.units] == ["shard-0@0"], "temporaries are not parts"
