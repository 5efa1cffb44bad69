"""`batchgen status`: where a job stands, from its output folder alone (no worker is asked).

Works while workers run, after they finish, and after they were killed: committed parts are the
truth, stats give times and rates, summary files say which workers ended and how, `_SUCCESS.json`
says the job is complete. A worker with commits but no summary newer than its last commit is
running, or was killed; how long ago it last committed tells which.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Iterable

from batchgen.errors import BatchgenError
from batchgen.io.shards import InputFiles, Unit
from batchgen.io.store import Store
from batchgen.job.spec import JobSpec
from batchgen.ops.outputstate import OutputState, load_state
from batchgen.work.manifest import planned


@dataclass
class UnitStatus:
    unit: str
    rows_total: int | None
    rows: int = 0
    errors: int = 0
    parts: int = 0
    last_commit: float | None = None
    workers: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        if self.rows_total is not None and self.rows >= self.rows_total:
            return "done"
        return "partial" if self.rows else "pending"


@dataclass
class WorkerStatus:
    worker: str
    rows: int = 0
    errors: int = 0
    parts: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    busy_seconds: float = 0.0  # sum of the spans between this worker's commits: time spent producing parts
    first_commit: float | None = None
    last_commit: float | None = None
    state: str = "?"

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.busy_seconds if self.busy_seconds else 0.0

    @property
    def output_tokens_per_second(self) -> float:
        return self.output_tokens / self.busy_seconds if self.busy_seconds else 0.0

    @property
    def cache_hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


@dataclass
class JobStatus:
    job: str
    output: str
    complete: bool
    rows_total: int | None
    rows: int
    errors: int
    units: list[UnitStatus]
    workers: list[WorkerStatus]
    started: float | None
    last_commit: float | None
    now: float
    notes: list[str] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        """Job-wide rate: committed rows over the time from the first part's start to the last commit."""
        if self.started is None or self.last_commit is None or self.last_commit <= self.started:
            return 0.0
        return self.rows / (self.last_commit - self.started)

    @property
    def eta_seconds(self) -> float | None:
        if self.complete or self.rows_total is None or not self.rows_per_second:
            return None
        return max(self.rows_total - self.rows, 0) / self.rows_per_second

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["units"] = [{**asdict(u), "state": u.state} for u in self.units]
        d["workers"] = [{**asdict(w), "rows_per_second": round(w.rows_per_second, 3),
                         "output_tokens_per_second": round(w.output_tokens_per_second, 1),
                         "cache_hit_rate": round(w.cache_hit_rate, 4)} for w in self.workers]
        d.update(rows_per_second=round(self.rows_per_second, 3), eta_seconds=self.eta_seconds,
                 units_done=sum(u.state == "done" for u in self.units))
        return d


def job_status(spec: JobSpec, now: float | None = None) -> JobStatus:
    return load_status(spec, now)[0]


def load_status(spec: JobSpec, now: float | None = None) -> tuple[JobStatus, OutputState]:
    """The status, and the output state it was computed from (the report draws its series from it)."""
    store = Store.open(spec.output.path, spec.output.storage)
    state = load_state(store)
    notes: list[str] = []
    try:
        source = InputFiles.open(spec.input)
        units: list[Unit] | None = planned(spec, source.layouts(source.discover()), store)[0].units
    except BatchgenError as e:
        units = None
        notes.append(f"input not readable ({e.message}): row totals unknown")
    return build_status(spec, store.url, state, units, now or time.time(), notes), state


def build_status(spec: JobSpec, output: str, state: OutputState, units: list[Unit] | None, now: float,
                 notes: list[str]) -> JobStatus:
    by_unit = {u.key: UnitStatus(u.key, u.rows) for u in units or []}
    by_worker: dict[str, WorkerStatus] = {}
    starts = []
    for s in state.stats:
        u = by_unit.setdefault(s["unit"], UnitStatus(s["unit"], None))
        w = by_worker.setdefault(s["worker"], WorkerStatus(s["worker"]))
        for target in (u, w):
            target.rows += s["rows"]
            target.errors += s["errors"]
            target.parts += 1
        if s["worker"] not in u.workers:
            u.workers.append(s["worker"])
        for key in ("prompt_tokens", "cached_tokens", "output_tokens"):
            setattr(w, key, getattr(w, key) + s[key])
        at = s["committed_at"]
        if at is not None:
            u.last_commit = max(u.last_commit or at, at)
            w.last_commit = max(w.last_commit or at, at)
            span = s["span_seconds"] or 0.0
            w.busy_seconds += span
            w.first_commit = min(w.first_commit or at, at)
            starts.append(at - span)
    for name, end in state.ends.items():
        by_worker.setdefault(name, WorkerStatus(name))
    for w in by_worker.values():
        w.state = _worker_state(w, state, spec.checkpoint.every_seconds, now)
    commits = [w.last_commit for w in by_worker.values() if w.last_commit is not None]
    return JobStatus(
        job=spec.name or "job", output=output, complete=state.complete,
        rows_total=sum(u.rows for u in units) if units is not None else None,
        rows=sum(u.rows for u in by_unit.values()), errors=sum(u.errors for u in by_unit.values()),
        units=sorted(by_unit.values(), key=lambda u: u.unit), workers=sorted(by_worker.values(), key=lambda w: w.worker),
        started=min(starts) if starts else None, last_commit=max(commits) if commits else None, now=now, notes=notes)


def _worker_state(w: WorkerStatus, state: OutputState, every_seconds: float, now: float) -> str:
    end = state.ends.get(w.worker)
    if end is not None and (w.last_commit is None or (end.written_at or 0) >= w.last_commit):
        s = end.summary
        if s.get("interrupted"):
            return "interrupted (rerun to resume)"
        return "finished" + (", job complete" if s.get("complete") or state.complete else "")
    if w.last_commit is None:
        return "no commits"
    quiet = now - w.last_commit
    # Commits come every `every_seconds` at most (sooner when every_rows fill first).
    if quiet <= 2 * every_seconds + 30:
        return "running"
    return f"no commit for {duration(quiet)}: killed or stuck? (rerun to resume)"


# -- text ------------------------------------------------------------------------------------------

def render_text(st: JobStatus, all_units: bool = False, shown: int = 30) -> list[str]:
    total = f"/{st.rows_total:,}" if st.rows_total is not None else ""
    pct = f" ({st.rows / st.rows_total:.1%})" if st.rows_total else ""
    done_units = sum(u.state == "done" for u in st.units)
    state = "complete" if st.complete else "incomplete"
    lines = [f"job {st.job}: {state}, {st.rows:,}{total} rows committed{pct}, {st.errors:,} error rows, "
             f"{done_units}/{len(st.units)} units done", f"  output       {st.output}"]
    if st.last_commit is not None:
        lines.append(f"  last commit  {_when(st.last_commit, st.now)}")
    if st.rows_per_second:
        eta = f", eta {duration(st.eta_seconds)}" if st.eta_seconds is not None else ""
        lines.append(f"  throughput   {st.rows_per_second:,.2f} rows/s over the job{eta}")
    lines += [f"  note: {n}" for n in st.notes]
    if st.workers:
        lines += ["", _row("worker", "rows", "errors", "parts", "rows/s", "out tok/s", "cache hit", "last commit", "state", numeric=6)]
        for w in st.workers:
            lines.append(_row(w.worker, f"{w.rows:,}", f"{w.errors:,}", w.parts, f"{w.rows_per_second:,.2f}",
                              f"{w.output_tokens_per_second:,.1f}", f"{w.cache_hit_rate:.1%}",
                              _when(w.last_commit, st.now) if w.last_commit else "-", w.state, numeric=6))
    units = st.units if all_units else _interesting(st.units, shown)
    lines += ["", _row("unit", "rows", "errors", "parts", "state", "last commit", "workers", numeric=3, width=28)]
    for u in units:
        total_u = f"/{u.rows_total:,}" if u.rows_total is not None else ""
        lines.append(_row(u.unit, f"{u.rows:,}{total_u}", f"{u.errors:,}", u.parts, u.state,
                          _when(u.last_commit, st.now) if u.last_commit else "-", ",".join(u.workers) or "-",
                          numeric=3, width=28))
    if len(units) < len(st.units):
        lines.append(f"... {len(st.units) - len(units)} more done unit(s) (--all lists every unit)")
    return lines


def _interesting(units: Iterable[UnitStatus], shown: int) -> list[UnitStatus]:
    """Units not done come first: those are what an operator looks for."""
    ordered = sorted(units, key=lambda u: (u.state == "done", u.unit))
    return ordered[:shown]


def _row(name: str, *cols: object, numeric: int, width: int = 20) -> str:
    """A table row: the name, `numeric` right-aligned columns, then free text columns."""
    nums, text = cols[:numeric], cols[numeric:]
    return f"{name:<{width}} " + " ".join(f"{str(c):>10}" for c in nums) + "  " + "  ".join(str(c) for c in text)


def _when(ts: float, now: float) -> str:
    return f"{datetime.fromtimestamp(ts).strftime('%Y-%m-%d %H:%M:%S')} ({duration(max(now - ts, 0))} ago)"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
