"""Work units: their default size, the plan fixed by the job's first run, and engines that never run dry at
a unit boundary (the instant engine and a paced stand-in for a GPU isolate the plan and the claimer on
purpose; the real engine's runs are in test_scale and test_elastic)."""

from __future__ import annotations

import json
import logging
import time

import pyarrow.parquet as pq
from typer.testing import CliRunner

from batchgen.work.manifest import recorded_plan
from batchgen.cli import app
from batchgen.engine.base import Completion
from batchgen.engine.instant import InstantEngine
from batchgen.io.store import Store
from batchgen.job.load import validate
from batchgen.engine.base import Request
from batchgen.io.shards import Unit
from batchgen.io.shards import InputFiles
from batchgen.work.plan import PlanRule, auto_unit_rows, cut_shard, plan_job
from batchgen.run.runner import RunOptions, Runner
from batchgen.job.spec import JobSpec, StorageSpec
from tests.conftest import job_dict, write_job, write_shards
from tests.outputs import stats_rows, texts_each_id_once


def test_auto_unit_rows():
    assert auto_unit_rows(0) == 256 and auto_unit_rows(8000) == 256 and auto_unit_rows(2500) == 256
    assert auto_unit_rows(100_000) == 1024  # 782 rounded up
    assert auto_unit_rows(1_000_000) == 8192  # 7,813 rounded up to a power of two
    assert auto_unit_rows(10_000_000) == 131072
    assert auto_unit_rows(10**9) == 200_000


def test_default_cuts_a_large_shard_for_many_engines(tmp_path, tiny_model):
    write_shards(tmp_path / "in", shards=1, rows=80_000, row_group=1000)
    spec = validate(job_dict(tiny_model, tmp_path / "in", tmp_path / "out"))
    files = InputFiles.open(spec.input)
    plan = plan_job(spec.input, files.layouts(files.discover()))
    assert plan.unit_rows == 1024 and len(plan.units) == 40  # 2 row groups of 1000 per unit (80,000 / 128 -> 1024)
    assert sum(u.rows for u in plan.units) == 80_000


def test_first_run_fixes_the_plan(tmp_path, tiny_model, caplog):
    """A resume asking for another unit size keeps the recorded one: committed parts stay valid, ids once."""
    ids = write_shards(tmp_path / "in", shards=2, rows=60, row_group=10)
    out = tmp_path / "out"
    first = validate(job_dict(tiny_model, tmp_path / "in", out, input={"unit_rows": 20}, runtime={"engine": "instant"}))
    assert Runner(first).run().complete
    store = Store.open(str(out), StorageSpec())
    assert recorded_plan(store) == PlanRule(20)
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
    assert json.loads((out / "_batchgen" / "job.json").read_text())["plan"] == {"unit_rows": 20, "split_row_groups": True}
    # `batchgen plan` shows the plan the runs use, and why.
    job = write_job(tmp_path / "job.yaml", job_dict(tiny_model, tmp_path / "in", out, input={"unit_rows": 40}))
    shown = CliRunner().invoke(app, ["plan", str(job)])
    assert shown.exit_code == 0 and "6 work units, 120 rows" in shown.output
    assert "units of about 20 rows (recorded in _batchgen/job.json by the job's first run)" in shown.output


def test_older_manifests_keep_their_cut(tmp_path):
    store = Store.open(str(tmp_path / "out"), StorageSpec())
    assert recorded_plan(store) is None
    store.put("_batchgen/job.json", json.dumps({"fingerprint": "x", "fields": {}}).encode())
    assert recorded_plan(store) == PlanRule(200_000, split_row_groups=False)  # before plans were recorded
    store.put("_batchgen/job.json", json.dumps({"fingerprint": "x", "fields": {}, "plan": {"unit_rows": 20}}).encode())
    assert recorded_plan(store) == PlanRule(20, split_row_groups=False)  # before row groups were split


def test_cut_shard():
    def cut(groups, rule):
        return [(u.row_start, u.row_end, u.row_groups) for u in cut_shard("s", "s.parquet", groups, rule)]

    assert cut([10, 10, 10], PlanRule(20)) == [(0, 20, (0, 1)), (20, 30, (2,))]
    # A row group larger than unit_rows becomes equal pieces; whole groups around it stay whole.
    assert cut([5, 100, 5, 5], PlanRule(40)) == [(0, 5, (0,)), (5, 38, (1,)), (38, 71, (1,)), (71, 105, (1,)), (105, 115, (2, 3))]
    assert cut([5, 100, 5, 5], PlanRule(40, split_row_groups=False)) == [(0, 105, (0, 1)), (105, 115, (2, 3))]
    # pyarrow's default row group (1Mi rows) for a job of 1M rows: 32 pieces, not 128 (re-reading bounded).
    assert cut([1_048_576], PlanRule(8192))[:2] == [(0, 32768, (0,)), (32768, 65536, (0,))]
    assert len(cut([1_048_576], PlanRule(8192))) == 32
    assert cut([], PlanRule(10)) == []
    units = cut_shard("s", "s.parquet", [5, 100], PlanRule(40))
    assert [u.key for u in units] == ["s@0", "s@5", "s@38", "s@71"]
    assert all(isinstance(u, Unit) for u in units)


def test_one_row_group_is_shared_and_resumed_row_exact(vllm_engine, tiny_model, tmp_path):
    """A shard written as a single row group (as pyarrow does up to 1Mi rows) is cut into units; each unit
    reads exactly its rows, on the real engine, and a resume after losing commits redoes only those."""
    ids = write_shards(tmp_path / "in", shards=1, rows=90, row_group=90, twin=lambda s, i: f"s{s}-{i:05d}")
    out = tmp_path / "out"
    job = job_dict(tiny_model, tmp_path / "in", out, input={"unit_rows": 20}, output={"path": str(out), "passthrough_columns": ["twin"]},
                   sampling={"temperature": 0, "max_tokens": 4}, checkpoint={"every_rows": 7},
                   runtime={"window": 8})  # rows finish a few at a time: several parts per unit, whatever the timing
    spec = validate(job)
    files = InputFiles.open(spec.input)
    plan = plan_job(spec.input, files.layouts(files.discover()))
    assert [(u.row_start, u.row_end) for u in plan.units] == [(0, 18), (18, 36), (36, 54), (54, 72), (72, 90)]
    assert Runner(spec, RunOptions(engine_factory=lambda _s: vllm_engine)).run().complete
    texts_each_id_once(out, ids)
    rows = pq.read_table(out / "parts", columns=["id", "twin"]).to_pylist()
    assert all(r["id"] == r["twin"] for r in rows), "a unit read rows of another unit"
    # Lose the last commit of every unit, then resume: only those rows again, each id once.
    parts = sorted((out / "parts").glob("*.parquet"))
    for unit in {p.name.rsplit(".", 2)[0] for p in parts}:
        max(p for p in parts if p.name.startswith(unit + ".")).unlink()
    (out / "_SUCCESS.json").unlink()
    summary = Runner(spec, RunOptions(engine_factory=lambda _s: vllm_engine)).run()
    assert summary.complete and 0 < summary.counters.rows < 90
    texts_each_id_once(out, ids)
    assert all(r["id"] == r["twin"] for r in pq.read_table(out / "parts", columns=["id", "twin"]).to_pylist())


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


class SlowClosingEngine(InstantEngine):
    """An engine whose shutdown takes `close_seconds` (a GPU engine's processes take seconds to exit)."""

    def __init__(self, spec: JobSpec, close_seconds: float):
        super().__init__(spec)
        self.close_seconds = close_seconds
        self.closed_at = 0.0

    def close(self) -> None:
        time.sleep(self.close_seconds)
        self.closed_at = time.time()
        super().close()


def test_output_ends_with_the_last_commit_not_the_engines_shutdown(tiny_model, tmp_path):
    """summary.output_ended_at (the benchmark's "req/s to last commit") is when the last part was committed: after
    the last result, and before a slow engine shutdown has ended, which is not the output's time."""
    write_shards(tmp_path / "in", shards=1, rows=30, row_group=30)
    job = job_dict(tiny_model, tmp_path / "in", tmp_path / "out", input={"unit_rows": 10},
                   runtime={"engine": "instant", "progress": "off"})
    spec = validate(job)
    engine = SlowClosingEngine(spec, close_seconds=1.5)
    summary = Runner(spec, RunOptions(engine_factory=lambda _s: engine)).run()
    assert summary.complete and summary.counters.rows == 30
    assert summary.generate_ended_at <= summary.output_ended_at < engine.closed_at - 1.0, summary
    newest_part = max(p.stat().st_mtime for p in (tmp_path / "out" / "parts").glob("*.parquet"))
    assert abs(summary.output_ended_at - newest_part) < 0.5
