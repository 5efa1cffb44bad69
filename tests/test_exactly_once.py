"""Exactly once as the user reads it: after kill -9 at any point, a polars glob, a pyarrow dataset and DuckDB
read every id once, no temp file sits where a glob sees it, and every part gets its stats row.

The kills are real SIGKILLs of real `batchgen run` processes (the instant engine: these tests are about
commits, not generation). The deterministic kill points are injected from the test: the child wraps the
function at that point and SIGKILLs itself there, then runs batchgen's own CLI; production code has no hooks.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchgen.io.layout import TMP, stats_path, temp_path
from batchgen.io.leftovers import remove_stale_temp
from batchgen.io.parts import to_parquet_bytes
from batchgen.io.shards import Unit
from batchgen.io.store import Store
from batchgen.job.spec import StorageSpec
from batchgen.run.prepare import repair_stats
from batchgen.run.stats import Counters, part_stats_bytes
from batchgen.work.ledger import Ledger
from tests.conftest import ROOT, job_dict, run_cli, write_job, write_shards
from tests.outputs import assert_each_id_once_as_users_read, temp_files

# Run batchgen's CLI in this process after wrapping one function so that its N-th matching call SIGKILLs
# the process right there. {wrap} installs the wrapper; `hit()` counts a match and kills on the N-th.
CHILD = """
import os, signal, sys
calls = []
def hit():
    calls.append(1)
    if len(calls) == {nth}:
        os.kill(os.getpid(), signal.SIGKILL)
{wrap}
sys.argv = ["batchgen", "run", {job!r}]
from batchgen.cli import main
main()
"""
# (a) after the part's temp file is written, before it is published into parts/ (a hard link).
BEFORE_PUBLISH = """
real_link = os.link
def link(src, dst, **kw):
    if "/parts/" in str(dst):
        hit()
    return real_link(src, dst, **kw)
os.link = link
"""
# (b) after the part is published, before its stats row is written.
BEFORE_STATS = """
from batchgen.io.store import Store
real_put = Store.put
def put(self, rel, data):
    if rel.startswith("stats/"):
        hit()
    return real_put(self, rel, data)
Store.put = put
"""


def killed_at(job: Path, wrap: str, nth: int) -> subprocess.CompletedProcess:
    code = CHILD.format(nth=nth, wrap=wrap, job=str(job))
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == -signal.SIGKILL, f"not killed at the injected point (rc {res.returncode}):\n{res.stderr[-3000:]}"
    return res


def instant_job(tiny_model: Path, tmp: Path, **sections: dict) -> dict:
    job = job_dict(tiny_model, tmp / "in", tmp / "out", runtime={"engine": "instant", "window": 8, "progress": "off"})
    for key, value in sections.items():
        job.setdefault(key, {}).update(value)
    return job


def parts_and_stats(out: Path) -> tuple[set[str], set[str]]:
    return ({p.name for p in (out / "parts").glob("*.parquet")},
            {p.name for p in (out / "stats").glob("*.parquet")} if (out / "stats").exists() else set())


def rows_in_parts(out: Path) -> int:
    """Rows of the part files, from their footers (not through a reader under test)."""
    return sum(pq.read_metadata(p).num_rows for p in (out / "parts").glob("*.parquet"))


def status_rows(job: Path) -> dict:
    res = run_cli("status", str(job), "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_kill_before_publish_and_before_stats_then_resume(tiny_model, tmp_path):
    ids = write_shards(tmp_path / "in", shards=2, rows=100, row_group=50)
    out = tmp_path / "out"
    job = write_job(tmp_path / "job.yaml", instant_job(tiny_model, tmp_path, checkpoint={"every_rows": 20}))

    # (a) Killed with the third part's temp file written, not yet published: two parts, and the temp file
    # under _batchgen/tmp/, where no reader's glob looks.
    killed_at(job, BEFORE_PUBLISH, nth=3)
    parts, _ = parts_and_stats(out)
    assert len(parts) == 2 and temp_files(out) == []
    left = list((out / TMP).iterdir())
    assert len(left) == 1 and left[0].name.endswith(".parquet.tmp")
    assert assert_each_id_once_as_users_read(out) == rows_in_parts(out) > 0

    # (b) The next run removes that temp file (its writer is dead), commits, and is killed between its
    # second part and that part's stats row.
    res = killed_at(job, BEFORE_STATS, nth=2)
    assert "removed 1 temp file(s) that killed runs left" in res.stderr
    assert not left[0].exists()
    parts, stats = parts_and_stats(out)
    assert len(parts) == 4 and len(parts - stats) == 1 and temp_files(out) == []
    committed = rows_in_parts(out)
    assert assert_each_id_once_as_users_read(out) == committed
    assert status_rows(job)["rows"] == committed  # status counts the part without stats from the part itself

    # The same command to the end: the missing stats row is written from its part, every reader sees every
    # id once, and status and the summary count every committed row.
    res = run_cli("run", str(job))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "wrote the missing stats row of 1 part(s)" in res.stderr
    assert f"{200 - committed} generated this run" in res.stdout and f"{committed} already committed" in res.stdout
    parts, stats = parts_and_stats(out)
    assert parts == stats and temp_files(out) == [] and list((out / TMP).iterdir()) == []
    assert assert_each_id_once_as_users_read(out, ids) == 200
    st = status_rows(job)
    assert st["complete"] and st["rows"] == 200 and sum(w["rows"] for w in st["workers"]) == 200


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_part_without_stats_gets_them_and_a_writers_own_stats_are_kept(where, tmp_path, request):
    """The repair on the next run, on disk and on S3 (create-if-absent: never over a live writer's own row)."""
    if where == "s3":
        s3 = request.getfixturevalue("s3")
        store = Store.open(f"s3://{s3.make_bucket()}/out", StorageSpec(**s3.storage()))
    else:
        store = Store.open(str(tmp_path / "out"), StorageSpec())
    unit = Unit("u@0", "u", 0, 8, (0,))
    table = pa.table({"row_index": pa.array([0, 1, 2, 3], pa.int64()), "prompt_tokens": pa.array([5] * 4, pa.int32()),
                      "cached_tokens": pa.array([2] * 4, pa.int32()), "output_tokens": pa.array([3] * 4, pa.int32()),
                      "error": ["bad", None, None, None]})
    ledger = Ledger(store, [unit])
    for seq in (0, 1):
        assert ledger.commit("u@0", [4 * seq + i for i in range(4)], lambda r: r,
                             lambda fresh, s: to_parquet_bytes(table, "zstd", {"worker": "w9", "seq": s}))[0] == seq
    own = part_stats_bytes("u@0", 1, "w9", Counters(rows=4), span=1.0, upload=0.5, backlog=0)
    store.put(stats_path("u@0", 1), own)  # seq 1's writer wrote its stats; seq 0's was killed before
    ledger = Ledger(store, [unit])
    ledger.load()
    assert repair_stats(store, ledger) == 1 and repair_stats(store, ledger) == 0
    row = pq.read_table(io.BytesIO(store.read_bytes(stats_path("u@0", 0)))).to_pylist()[0]
    assert (row["worker"], row["rows"], row["errors"], row["prompt_tokens"], row["cached_tokens"]) == ("w9", 4, 1, 20, 8)
    assert row["committed_at"] is None  # lost with the worker
    assert store.read_bytes(stats_path("u@0", 1)) == own


def test_only_temp_files_of_dead_writers_are_removed(tmp_path):
    """The rule for another live writer's temp files: this host's by pid (and start time: a recycled pid is a
    dead writer), another host's by age only."""
    import psutil

    store = Store.open(str(tmp_path), StorageSpec())
    host, now = socket.gethostname(), time.time()
    dead = subprocess.Popen(["true"])
    dead.wait()
    started = psutil.Process().create_time()
    files = {
        "dead writer": (temp_path(host, dead.pid, "a" * 32, "p.parquet"), now),
        "live writer": (temp_path(host, os.getpid(), "b" * 32, "p.parquet"), now),
        "recycled pid": (temp_path(host, os.getpid(), "c" * 32, "p.parquet"), started - 60),
        "other host, fresh": (temp_path("elsewhere", 1, "d" * 32, "p.parquet"), now - 60),
        "other host, old": (temp_path("elsewhere", 1, "e" * 32, "p.parquet"), now - 7200),
        # What older versions left beside the part, where globs see it.
        "legacy, old": ("parts/.tmp-f00-u@0.000000.parquet", now - 600),
        "legacy, fresh": ("parts/.tmp-f01-u@0.000001.parquet", now),
    }
    for rel, mtime in files.values():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        os.utime(path, (mtime, mtime))
    removed = set(remove_stale_temp(store, now=now))
    assert removed == {files[w][0] for w in ("dead writer", "recycled pid", "other host, old", "legacy, old")}


def test_25_random_kills_leave_every_id_once_for_every_reader(tiny_model, tmp_path):
    """>= 25 SIGKILLs of paced runs at random moments (during start, mid-generation, mid-commit), a rerun
    after each; after every kill no reader sees an id twice or a temp file, and at the end every id once."""
    ids = write_shards(tmp_path / "in", shards=3, rows=3000, row_group=500)
    out = tmp_path / "out"
    base = instant_job(tiny_model, tmp_path, checkpoint={"every_rows": 100000, "every_seconds": 0.1},
                       runtime={"instant_rows_per_second": 300})
    job = write_job(tmp_path / "job.yaml", base)
    rng = random.Random(14)
    kills = after_commit = 0
    t0 = time.monotonic()
    while kills < 25:
        before = len(parts_and_stats(out)[0]) if (out / "parts").exists() else 0
        proc = subprocess.Popen([sys.executable, "-m", "batchgen", "run", str(job)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if rng.random() < 0.3:  # anywhere from start-up (sweeping, repairing, planning) on
            time.sleep(rng.uniform(0.2, 3.0))
        else:  # once this run has committed, a moment later: mid-generation or mid-commit
            end = time.monotonic() + 60
            while len(list((out / "parts").glob("*.parquet"))) <= before:
                assert proc.poll() is None and time.monotonic() < end, f"run {kills + 1} committed nothing"
                time.sleep(0.02)
            after_commit += 1
            time.sleep(rng.uniform(0, 0.6))
        assert proc.poll() is None, f"run {kills + 1} ended by itself (rc {proc.returncode}) before its kill"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        kills += 1
        assert temp_files(out) == []
        assert_each_id_once_as_users_read(out)
    assert after_commit >= 10
    committed = assert_each_id_once_as_users_read(out)
    assert committed < len(ids)

    res = run_cli("run", str(job), "--set", "runtime.instant_rows_per_second=0")
    assert res.returncode == 0, res.stderr[-3000:]
    parts, stats = parts_and_stats(out)
    assert temp_files(out) == [] and list((out / TMP).iterdir()) == []
    assert parts == stats, f"parts without stats: {sorted(parts - stats)[:5]}"
    assert assert_each_id_once_as_users_read(out, ids) == len(ids)
    print(f"{kills} kills ({after_commit} after a commit of their run), {committed} rows committed by them, "
          f"{len(parts)} parts, {time.monotonic() - t0:.0f}s")

