"""What an output folder says about its job: committed parts, their stats, summaries, completion.

Read-only, and safe while workers are writing: every file read here is written whole (atomic
rename or single PUT), so a listing shows complete files only. A part whose stats file is missing
(the worker was killed between the two writes, and no run has repaired it yet: run.prepare) is
counted from the part itself, so `status` never under-counts committed rows.
"""

from __future__ import annotations

import io
import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow.parquet as pq

from batchgen.io.layout import MANIFEST, META, STATS, SUCCESS, parse_part, part_path, stats_path, summary_path, summary_worker
from batchgen.io.store import Store
from batchgen.run.stats import stats_from_part
from batchgen.work.ledger import committed_parts

_READERS = 16  # parallel reads of small stats files (object stores: latency-bound)
# pyarrow's own thread pool is off for these tiny files: with it, pyarrow 26 aborts at interpreter exit
# now and then ("terminate called without an active exception"), which turned `status` exits into 134.


@dataclass
class WorkerEnd:
    """A worker's last summary file (written when a run ends, however it ends, except SIGKILL)."""

    summary: dict[str, Any]
    written_at: float | None


@dataclass
class OutputState:
    stats: list[dict[str, Any]]  # one row per committed part (STATS_SCHEMA), sorted by commit time
    success: dict[str, Any] | None
    ends: dict[str, WorkerEnd] = field(default_factory=dict)
    manifest: dict[str, Any] | None = None

    @property
    def complete(self) -> bool:
        return self.success is not None


def load_state(store: Store) -> OutputState:
    parts = committed_parts(store)
    with_stats = [p for p in map(parse_part, store.listdir(STATS)) if p in parts]
    with ThreadPoolExecutor(_READERS) as pool:
        stats = [row for rows in pool.map(lambda p: _stats_rows(store, *p), with_stats) for row in rows]
        have = {(r["unit"], r["seq"]) for r in stats}
        missing = sorted(parts - have)
        stats += list(pool.map(lambda p: _stats_from_part(store, *p), missing))
    stats.sort(key=lambda r: (_num(r["committed_at"], math.inf), r["unit"], r["seq"]))
    return OutputState(stats=stats, success=_json(store, SUCCESS), ends=_ends(store), manifest=_json(store, MANIFEST))


def _stats_rows(store: Store, unit: str, seq: int) -> list[dict[str, Any]]:
    return pq.read_table(io.BytesIO(store.read_bytes(stats_path(unit, seq))), use_threads=False).to_pylist()


def _stats_from_part(store: Store, unit: str, seq: int) -> dict[str, Any]:
    return stats_from_part(store.read_bytes(part_path(unit, seq)), unit, seq)


def _json(store: Store, rel: str) -> dict[str, Any] | None:
    try:
        return json.loads(store.read_bytes(rel)) if store.exists(rel) else None
    except FileNotFoundError:
        return None


def _ends(store: Store) -> dict[str, WorkerEnd]:
    ends = {}
    for name in store.listdir(META):
        worker = summary_worker(name)
        if worker is not None:
            summary = _json(store, summary_path(worker))
            if summary is not None:
                ends[summary.get("worker", worker)] = WorkerEnd(summary, _mtime(store, summary_path(worker)))
    return ends


def _mtime(store: Store, rel: str) -> float | None:
    """Modification time of a file: `mtime` locally, `LastModified` on S3."""
    try:
        info = store.fs.info(store.path(rel))
    except OSError:
        return None
    value = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value) if isinstance(value, (int, float)) else None


def _num(value: Any, default: float) -> float:
    return default if value is None else float(value)
