"""Reading a job's output folder in tests: committed rows, stats rows, leases (as files, not via batchgen)."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pyarrow.parquet as pq

from batchgen.io.shards import InputFiles, Unit
from batchgen.job.spec import JobSpec
from batchgen.work.plan import plan_job


def planned_units(spec: JobSpec) -> list[Unit]:
    """The units a first run of `spec` would cut (no recorded plan)."""
    files = InputFiles.open(spec.input)
    return plan_job(spec.input, files.layouts(files.discover())).units


def stats_rows(out: Path) -> list[dict]:
    """One row per committed part: unit, worker, rows (files being written are skipped)."""
    rows = []
    for path in sorted((out / "stats").glob("*.parquet")) if (out / "stats").exists() else []:
        try:
            rows += pq.read_table(path, columns=["unit", "worker", "rows"]).to_pylist()
        except OSError:
            continue
    return rows


def committed_units(out: Path, worker: str) -> set[str]:
    return {r["unit"] for r in stats_rows(out) if r["worker"] == worker}


def current_leases(out: Path) -> dict[str, dict]:
    """unit -> its current (highest generation) lease."""
    found: dict[str, dict] = {}
    for path in (out / "_batchgen" / "leases").glob("*.json"):
        try:
            lease = json.loads(path.read_text())
        except (ValueError, FileNotFoundError):
            continue
        if lease["gen"] >= found.get(lease["unit"], {"gen": -1})["gen"]:
            found[lease["unit"]] = lease
    return found


def texts_each_id_once(out: Path, ids: list[str] | None = None) -> dict[str, str]:
    """id -> text of every committed row; fails on a duplicate id, an error row, or (given `ids`) a missing id."""
    rows = pq.read_table(out / "parts", columns=["id", "text", "error"]).to_pylist()
    counts = collections.Counter(r["id"] for r in rows)
    assert [k for k, v in counts.items() if v > 1] == []
    assert [r["id"] for r in rows if r["error"] is not None] == []
    if ids is not None:
        assert sorted(counts) == sorted(ids)
    return {r["id"]: r["text"] for r in rows}
