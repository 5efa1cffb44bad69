"""The job over time, from the stats rows (one per committed part): what the report's charts draw.

A part's stats say when it was committed and how long its worker spent on it (`span_seconds`, the
time since that worker's previous commit). Rates spread each part's rows and output tokens evenly
over its span before summing them into equal time bins: counting a part only in the bin of its
commit would draw a comb of spikes and zeros whenever bins are narrower than parts. A worker's rate
is 0 only where none of its parts was being produced (between runs of a killed and resumed job).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

BINS, MIN_BINS = 60, 8  # rate bins over the job's span


@dataclass
class WorkerLine:
    worker: str
    t: list[float] = field(default_factory=list)  # seconds since the timeline's origin, one per committed part
    rows_cumulative: list[int] = field(default_factory=list)
    errors_cumulative: list[int] = field(default_factory=list)
    cache_hit_pct: list[float] = field(default_factory=list)
    upload_backlog: list[int] = field(default_factory=list)
    rows_per_second: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per rate bin; NaN outside its runs
    output_tokens_per_second: np.ndarray = field(default_factory=lambda: np.zeros(0))


@dataclass
class Timeline:
    origin: float | None  # epoch seconds of t = 0: the earliest engine start or part start
    bin_edges: np.ndarray  # seconds since origin
    workers: list[WorkerLine]
    engine_starts: dict[str, tuple[float, float]]  # worker -> (from, to) seconds since origin

    @property
    def bin_centres(self) -> np.ndarray:
        return (self.bin_edges[:-1] + self.bin_edges[1:]) / 2

    @property
    def end(self) -> float:
        return float(self.bin_edges[-1]) if len(self.bin_edges) else 0.0

    def total(self, name: str) -> np.ndarray:
        """A rate summed over workers (a worker outside its runs adds 0)."""
        rates = [np.nan_to_num(getattr(w, name)) for w in self.workers]
        return np.sum(rates, axis=0) if rates else np.zeros(0)


def build_timeline(stats: Sequence[dict[str, Any]], engine_starts: dict[str, tuple[float, float]],
                   bins: int = BINS) -> Timeline:
    """`engine_starts`: worker -> (start, end) epoch seconds of its last run's engine start, where known."""
    timed = [s for s in stats if s["committed_at"] is not None]
    if not timed:
        return Timeline(None, np.zeros(0), [], {})
    starts = [s["committed_at"] - (s["span_seconds"] or 0.0) for s in timed]
    origin = min(starts + [a for a, _ in engine_starts.values()])
    end = max(s["committed_at"] for s in timed) - origin
    # Bins of about three parts at least: narrower ones show each part's own noise, not the job's rate.
    spans = sorted(s["span_seconds"] for s in timed if s["span_seconds"])
    if spans:
        bins = int(np.clip(end / (3 * spans[len(spans) // 2]), MIN_BINS, bins))
    edges = np.linspace(0.0, max(end, 1e-6), bins + 1)
    by_worker: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in sorted(timed, key=lambda s: s["committed_at"]):
        by_worker[s["worker"]].append(s)
    lines = [_worker_line(worker, rows, origin, edges) for worker, rows in sorted(by_worker.items())]
    shifted = {w: (a - origin, b - origin) for w, (a, b) in engine_starts.items()}
    return Timeline(origin, edges, lines, shifted)


def _worker_line(worker: str, parts: list[dict[str, Any]], origin: float, edges: np.ndarray) -> WorkerLine:
    line = WorkerLine(worker)
    rows = errors = 0
    for s in parts:
        rows += s["rows"]
        errors += s["errors"]
        line.t.append(s["committed_at"] - origin)
        line.rows_cumulative.append(rows)
        line.errors_cumulative.append(errors)
        line.cache_hit_pct.append(100.0 * (s["cache_hit_rate"] or 0.0))
        line.upload_backlog.append(int(s["upload_backlog"] or 0))
    spans = [(s["committed_at"] - (s["span_seconds"] or 0.0) - origin, s["committed_at"] - origin) for s in parts]
    line.rows_per_second = _spread([s["rows"] for s in parts], spans, edges)
    line.output_tokens_per_second = _spread([s["output_tokens"] for s in parts], spans, edges)
    return line


def _spread(amounts: list[int], spans: list[tuple[float, float]], edges: np.ndarray) -> np.ndarray:
    """Amount per second in each bin, each amount spread evenly over its span; NaN before the first span
    starts and after the last one ends (the worker was not there), 0 in gaps between its runs."""
    width = edges[1] - edges[0]
    total = np.zeros(len(edges) - 1)
    for amount, (a, b) in zip(amounts, spans):
        if b - a <= 1e-9:  # no span known (stats rebuilt from a part): all of it at the commit
            k = min(int(b / width), len(total) - 1)
            total[k] += amount
            continue
        overlap = np.clip(np.minimum(edges[1:], b) - np.maximum(edges[:-1], a), 0.0, None)
        total += amount * overlap / (b - a)
    rate = total / width
    first, last = min(a for a, _ in spans), max(b for _, b in spans)
    rate[(edges[1:] <= first) | (edges[:-1] >= last)] = np.nan
    return rate
