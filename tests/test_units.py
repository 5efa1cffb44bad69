"""Work units: their default size, the plan fixed by the job's first run, and engines that never run dry at
a unit boundary (the instant engine and a paced stand-in for a GPU isolate the plan and the claimer on
purpose; the real engine's runs are in test_scale and test_elastic)."""

from __future__ import annotations

import json
import logging
import time

import pyarrow.parquet as pq
from typer.testing import CliRunner

from batchgen.checkpoint import recorded_unit_rows
from batchgen.cli import app
from batchgen.engine.base import Completion
from batchgen.engine.instant import InstantEngine
from batchgen.io.store import Store
from batchgen.jobfile import validate
from batchgen.plan import auto_unit_rows, discover_shards, plan_job
from batchgen.prompts import Request
from batchgen.runner import RunOptions, Runner
from batchgen.spec import JobSpec, StorageSpec
from tests.conftest import job_dict, write_job, write_shards
from tests.outputs import stats_rows, texts_each_id_once


def test_auto_unit_rows():
    assert auto_unit_rows(0) == 1024 and auto_unit_rows(8000) == 1024
    assert auto_unit_rows(1_000_000) == 8192  # 7,813 rounded up to a power of two
    assert auto_unit_rows(10_000_000) == 131072
    assert auto_unit_rows(10**9) == 200_000


def test_default_cuts_a_large_shard_for_many_engines(tmp_path, tiny_model):
    write_shards(tmp_path / "in", shards=1, rows=40_000, row_group=1000)
    spec = validate(job_dict(tiny_model, tmp_path / "in", tmp_path / "out"))
    plan = plan_job(spec.input, discover_shards(spec.input))
    assert plan.unit_rows == 1024 and len(plan.units) == 20  # 2 row groups of 1000 per unit
    assert sum(u.rows for u in plan.units) == 40_000


def test_first_run_fixes_the_plan(tmp_path, tiny_model, caplog):
    """A resume asking for another unit size keeps the recorded one: committed parts stay valid, ids once."""
    ids = write_shards(tmp_path / "in", shards=2, rows=60, row_group=10)
    out = tmp_path / "out"
    first = validate(job_dict(tiny_model, tmp_path / "in", out, input={"unit_rows": 20}, runtime={"engine": "instant"}))
    assert Runner(first).run().complete
    store = Store.open(str(out), StorageSpec())
    assert recorded_unit_rows(store) == 20
    # Lose the last commit of every unit (a crash before them), then resume asking for units of 40.
    parts = sorted((out / "parts").glob("*.parquet"))
    units = {p.name.rsplit(".", 2)[0] for p in parts}
    for unit in units:
        max(p for p in parts if p.name.startswith(unit + ".")).unlink()
    (out / "_SUCCESS.json").unlink()
    again = validate(job_dict(tiny_model, tmp_path / "in", out, input={"unit_rows": 40}, runtime={"engine": "instant"}))
    with caplog.at_level(logging.WARNING, logger="batchgen"):
        summary = Runner(again).run()
    assert summary.complete
    assert "planned with 20: keeping 20" in caplog.text
    rows = pq.read_table(out / "parts", columns=["id"]).column(0).to_pylist()
    assert sorted(rows) == sorted(ids)  # each id exactly once
    assert {p.name.rsplit(".", 2)[0] for p in (out / "parts").glob("*.parquet")} == units
    assert json.loads((out / "_batchgen" / "job.json").read_text())["plan"] == {"unit_rows": 20}
    # `batchgen plan` shows the plan the runs use, and why.
    job = write_job(tmp_path / "job.yaml", job_dict(tiny_model, tmp_path / "in", out, input={"unit_rows": 40}))
    shown = CliRunner().invoke(app, ["plan", str(job)])
    assert shown.exit_code == 0 and "6 work units, 120 rows" in shown.output
    assert "units of about 20 rows (recorded in _batchgen/job.json by the job's first run)" in shown.output


def test_manifest_without_a_plan_means_the_old_default(tmp_path):
    store = Store.open(str(tmp_path / "out"), StorageSpec())
    assert recorded_unit_rows(store) is None
    store.put("_batchgen/job.json", json.dumps({"fingerprint": "x", "fields": {}}).encode())
    assert recorded_unit_rows(store) == 200_000


class PacedEngine(InstantEngine):
    """Finishes up to `per_step` requests per step, each step taking `step_seconds` (a GPU's pace, not its
    work), and records the requests in flight when each step began."""

    def __init__(self, spec: JobSpec, per_step: int, step_seconds: float):
        super().__init__(spec, max_num_seqs=per_step)
        self.step_seconds = step_seconds
        self.added = 0
        self.trace: list[tuple[int, int]] = []  # (in flight at the step, requests added so far)

    def add(self, req: Request) -> str | None:
        self.added += 1
        return super().add(req)

    def step(self) -> list[Completion]:
        self.trace.append((self.in_flight(), self.added))
        time.sleep(self.step_seconds)
        return super().step()


def test_the_next_unit_is_claimed_before_the_previous_is_committed(tiny_model, tmp_path):
    """6 units of 40 rows, window 8, 4 rows finished per 30 ms step, no commit before the end: the window is
    full at every step until the last row is in, so no unit boundary drains the engine."""
    ids = write_shards(tmp_path / "in", shards=3, rows=80, row_group=40)
    job = job_dict(tiny_model, tmp_path / "in", tmp_path / "out", input={"unit_rows": 40}, checkpoint={"every_rows": 10_000},
                   runtime={"window": 8, "order_by_prefix": False, "engine": "instant", "progress": "off"})
    spec = validate(job)
    engine = PacedEngine(spec, per_step=4, step_seconds=0.03)
    summary = Runner(spec, RunOptions(engine_factory=lambda _s: engine, claim=True)).run()
    assert summary.complete
    texts_each_id_once(tmp_path / "out", ids)
    feeding = [in_flight for in_flight, added in engine.trace if added < len(ids)]
    assert len(feeding) > 40 and min(feeding) == 8, engine.trace
    assert len(stats_rows(tmp_path / "out")) == 6  # one commit per unit, all at the end
