"""One view of a node's engines: progress from their committed stats, one summary from theirs.

The engines are separate processes; rather than a side channel, the supervisor reads what they
commit anyway (`stats/` rows, `_batchgen/summary-<engine>.json`). Progress therefore counts
committed rows: it moves at each checkpoint and never counts a row that could still be lost.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import signal
import time
from typing import Any, Sequence

import pyarrow.parquet as pq

from batchgen.errors import BatchgenError
from batchgen.io.layout import STATS, parse_part, stats_path, summary_path
from batchgen.io.store import Store
from batchgen.run.progress import Progress
from batchgen.run.stats import Counters, Summary

log = logging.getLogger("batchgen")


class NodeProgress:
    """Feeds a Progress with the rows the node's engines commit (read from their stats rows)."""

    def __init__(self, store: Store, workers: Sequence[str], progress: Progress):
        self.store, self.workers, self.progress = store, set(workers), progress
        # Stats already there belong to earlier runs (or other nodes): only new ones count.
        self._seen = set(self._parts())

    def _parts(self) -> list[tuple[str, int]]:
        return [p for p in map(parse_part, self.store.listdir(STATS)) if p]

    def refresh(self) -> None:
        try:
            fresh = [p for p in self._parts() if p not in self._seen]
            for part in fresh:
                table = pq.read_table(io.BytesIO(self.store.read_bytes(stats_path(*part))),
                                      columns=["worker", "rows", "output_tokens", "errors"])
                self._seen.add(part)
                for row in table.to_pylist():
                    if row["worker"] in self.workers:
                        self.progress.update(row["rows"], row["output_tokens"], row["errors"])
        except (BatchgenError, OSError, ValueError) as e:  # progress is a view: never stop the node for it
            log.debug("progress refresh failed: %s", e)

    def close(self) -> None:
        self.refresh()
        self.progress.close()


def read_summary(store: Store, worker: str) -> Summary | None:
    """The summary an engine saved at its end; None if it saved none (it failed before)."""
    try:
        data: dict[str, Any] = json.loads(store.read_bytes(summary_path(worker)))
    except (FileNotFoundError, ValueError):
        return None
    counters = Counters(**{f.name: data.get(f.name, 0) for f in dataclasses.fields(Counters)})
    fields = {f.name: data[f.name] for f in dataclasses.fields(Summary) if f.name in data and f.name != "counters"}
    return Summary(counters=counters, **fields)


def node_summary(base: Summary, parts: Sequence[Summary], engines: int) -> Summary:
    """One summary for the node: counters add up; generation time is from the first engine's start to the
    last one's end (an engine that became ready late counts as idle time of the node, not as free time)."""
    out = dataclasses.replace(base)
    # An engine that generated nothing (it became ready after the others had taken every unit) does not
    # stretch the node's window.
    working = [s for s in parts if s.counters.rows > 0] or list(parts)
    timed = [s for s in working if s.generate_started_at and s.generate_ended_at]
    if timed:
        out.generate_started_at = min(s.generate_started_at for s in timed)
        out.generate_ended_at = max(s.generate_ended_at for s in timed)
    for s in parts:
        out.counters = out.counters.merge(s.counters)
        out.upload_retries += s.upload_retries
        out.upload_wait_seconds = max(out.upload_wait_seconds, s.upload_wait_seconds)
        out.generate_seconds = max(out.generate_seconds, s.generate_seconds)
        out.engine_start_seconds = max(out.engine_start_seconds, s.engine_start_seconds)
        out.interrupted = out.interrupted or s.interrupted
        out.complete = out.complete or s.complete
    if timed and len(timed) == len(working):
        out.generate_seconds = out.generate_ended_at - out.generate_started_at
    if parts:
        out.engine, out.engine_version = parts[0].engine, parts[0].engine_version
        out.device = f"{engines} engines, {parts[0].device}"
        out.engine_options = dict(parts[0].engine_options)
        out.engine_ready_at = max(s.engine_ready_at for s in parts)  # the node runs at full strength from here
        out.output_ended_at = max(s.output_ended_at for s in parts)
        out.host_cpu = [{"worker": s.worker, **p} for s in parts for p in s.host_cpu]
    return out


def engine_line(index: int, worker: str, code: int | None, summary: Summary | None) -> str:
    if code is None:
        state = "running"
    elif code < 0:
        state = f"killed by {signal.Signals(-code).name}"
    else:
        state = {0: "done", 75: "interrupted"}.get(code, f"failed (exit {code})")
    if summary is None:
        return f"  e{index}  {worker}: {state}, no summary"
    d = summary.as_dict()
    return (f"  e{index}  {worker}: {state}, {d['rows']} rows, {d['rows_per_second']} rows/s, "
            f"engine start {summary.engine_start_seconds:.1f}s on {summary.device}, generating "
            f"{_clock(summary.generate_started_at)}-{_clock(summary.generate_ended_at)}")


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch)) + f".{int(epoch % 1 * 10)}" if epoch else "?"
