"""What an output folder says about its job: committed parts, their stats, summaries, completion.

Read-only, and safe while workers are writing: every file read here is written whole (atomic
rename or single PUT), so a listing shows complete files only. A part whose stats file is missing
(the worker was killed between the two writes) is counted from the part itself, so `status` never
under-counts committed rows.
"""

from __future__ import annotations

import io
import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchgen.checkpoint import META, PARTS, STATS, SUCCESS, parse_part
from batchgen.io.parts import read_meta
from batchgen.io.store import Store
from batchgen.stats import STATS_SCHEMA

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


def committed_parts(store: Store) -> set[tuple[str, int]]:
    """(unit, seq) of every committed part. Dot files are temporaries of a write in progress (or of a
    worker killed mid-write, which leaves them behind): never parts, though their names end alike."""
    return {p for p in (parse_part(n) for n in store.listdir(PARTS) if not n.startswith(".")) if p}


def load_state(store: Store) -> OutputState:
    parts = committed_parts(store)
    stat_names = [n for n in store.listdir(STATS) if parse_part(n) in parts]
    with ThreadPoolExecutor(_READERS) as pool:
        stats = [row for rows in pool.map(lambda n: _stats_rows(store, n), stat_names) for row in rows]
        have = {(r["unit"], r["seq"]) for r in stats}
        missing = sorted(parts - have)
        stats += list(pool.map(lambda p: _stats_from_part(store, *p), missing))
    stats.sort(key=lambda r: (_num(r["committed_at"], math.inf), r["unit"], r["seq"]))
    return OutputState(stats=stats, success=_json(store, SUCCESS), ends=_ends(store), manifest=_json(store, f"{META}/job.json"))


def _stats_rows(store: Store, name: str) -> list[dict[str, Any]]:
    return pq.read_table(io.BytesIO(store.read_bytes(f"{STATS}/{name}")), use_threads=False).to_pylist()


def _stats_from_part(store: Store, unit: str, seq: int) -> dict[str, Any]:
    """Stats rebuilt from a part (no commit time or span: those were lost with the worker)."""
    data = store.read_bytes(f"{PARTS}/{unit}.{seq:06d}.parquet")
    table = pq.read_table(io.BytesIO(data), columns=["prompt_tokens", "cached_tokens", "output_tokens", "error"],
                          use_threads=False)
    sums = {c: int(pc.sum(table.column(c)).as_py() or 0) for c in ("prompt_tokens", "cached_tokens", "output_tokens")}
    row = {f.name: None for f in STATS_SCHEMA}
    row.update(unit=unit, seq=seq, worker=read_meta(data).get("worker", "?"), rows=table.num_rows,
               errors=table.num_rows - table.column("error").null_count, **sums,
               cache_hit_rate=sums["cached_tokens"] / sums["prompt_tokens"] if sums["prompt_tokens"] else 0.0)
    return row


def _json(store: Store, rel: str) -> dict[str, Any] | None:
    try:
        return json.loads(store.read_bytes(rel)) if store.exists(rel) else None
    except FileNotFoundError:
        return None


def _ends(store: Store) -> dict[str, WorkerEnd]:
    ends = {}
    for name in store.listdir(META):
        if name.startswith("summary-") and name.endswith(".json"):
            summary = _json(store, f"{META}/{name}")
            if summary is not None:
                ends[summary.get("worker", name[8:-5])] = WorkerEnd(summary, _mtime(store, f"{META}/{name}"))
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
