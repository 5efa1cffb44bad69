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


def ids_as_users_read_them(out: Path, id_column: str = "id") -> dict[str, list]:
    """The ids of parts/ read the way users read an output folder: a polars glob (README), a
    pyarrow dataset of the folder, and DuckDB's read_parquet over the same glob."""
    import duckdb
    import polars as pl
    import pyarrow.dataset as ds

    glob = str(out / "parts" / "*.parquet")
    if not (out / "parts").exists() or not any((out / "parts").glob("*.parquet")):
        return {"polars": [], "pyarrow.dataset": [], "duckdb": []}
    return {
        "polars": pl.read_parquet(glob, columns=[id_column])[id_column].to_list(),
        "pyarrow.dataset": ds.dataset(out / "parts", format="parquet").to_table(columns=[id_column]).column(0).to_pylist(),
        "duckdb": [r[0] for r in duckdb.connect().execute(f"SELECT {id_column} FROM read_parquet('{glob}')").fetchall()],
    }


def assert_each_id_once_as_users_read(out: Path, ids: list[str] | None = None) -> int:
    """No reader sees an id twice; given `ids`, every reader sees exactly those. Returns the rows seen."""
    seen = ids_as_users_read_them(out)
    for reader, got in seen.items():
        twice = sorted(k for k, v in collections.Counter(got).items() if v > 1)
        assert twice == [], f"{reader} reads {len(twice)} ids twice, e.g. {twice[:3]}"
        if ids is not None:
            assert sorted(got) == sorted(ids), f"{reader}: {len(got)} rows, {len(set(ids) - set(got))} ids missing"
    counts = {len(v) for v in seen.values()}
    assert len(counts) == 1, f"the readers disagree: { {k: len(v) for k, v in seen.items()} }"
    return counts.pop()


def temp_files(out: Path) -> list[str]:
    """Anything in parts/ or stats/ that is not a part file name (a reader's glob may see it)."""
    from batchgen.io.layout import parse_part

    return sorted(f"{d}/{p.name}" for d in ("parts", "stats") if (out / d).exists()
                  for p in (out / d).iterdir() if parse_part(p.name) is None)
