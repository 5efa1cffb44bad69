"""Mergeable counters, the per-part stats rows and the job summary. Nothing here prints."""

from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchgen.io.parts import OutputRow, read_meta
from batchgen.io.shards import Unit
from batchgen.job.spec import JobSpec
from batchgen.run import hostcpu


@dataclass
class Counters:
    rows: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    invalid_json: int = 0  # of the error rows: generated, but the JSON failed its check (text kept)

    def add_rows(self, rows: Iterable[OutputRow]) -> None:
        for r in rows:
            self.rows += 1
            self.errors += r.error is not None
            self.prompt_tokens += r.prompt_tokens
            self.cached_tokens += r.cached_tokens
            self.output_tokens += sum(r.output_tokens)
            self.invalid_json += r.invalid_json

    def merge(self, other: Counters) -> Counters:
        return Counters(**{k: getattr(self, k) + getattr(other, k) for k in asdict(self)})

    @property
    def cache_hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


STATS_SCHEMA = pa.schema([
    ("unit", pa.string()), ("seq", pa.int64()), ("worker", pa.string()), ("committed_at", pa.float64()),
    ("rows", pa.int64()), ("errors", pa.int64()), ("prompt_tokens", pa.int64()), ("cached_tokens", pa.int64()),
    ("output_tokens", pa.int64()), ("cache_hit_rate", pa.float64()), ("span_seconds", pa.float64()),
    ("upload_seconds", pa.float64()), ("upload_backlog", pa.int64()), ("invalid_json", pa.int64()),
    ("job", pa.string()),  # the manifest's job that wrote the part (null in stats written before jobs were recorded)
])


def part_stats_bytes(unit: str, seq: int, worker: str, counters: Counters, span: float, upload: float, backlog: int,
                     job: str | None = None) -> bytes:
    row = {"unit": unit, "seq": seq, "worker": worker, "committed_at": time.time(), **asdict(counters),
           "cache_hit_rate": counters.cache_hit_rate, "span_seconds": span, "upload_seconds": upload, "upload_backlog": backlog,
           "job": job}
    return stats_bytes(row)


def stats_bytes(row: dict[str, Any]) -> bytes:
    """A stats file: one STATS_SCHEMA row as Parquet."""
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([row], schema=STATS_SCHEMA), buf)
    return buf.getvalue()


def stats_from_part(data: bytes, unit: str, seq: int) -> dict[str, Any]:
    """The stats row of a part, rebuilt from the part's bytes: for a part whose worker was killed before
    it wrote the stats file. Commit time, span and upload figures were lost with the worker (null)."""
    table = pq.read_table(io.BytesIO(data), columns=["prompt_tokens", "cached_tokens", "output_tokens", "error"],
                          use_threads=False)
    sums = {c: int(pc.sum(table.column(c)).as_py() or 0) for c in ("prompt_tokens", "cached_tokens", "output_tokens")}
    row: dict[str, Any] = {f.name: None for f in STATS_SCHEMA}
    meta = read_meta(data)
    row.update(unit=unit, seq=seq, worker=meta.get("worker", "?"), job=meta.get("job"), rows=table.num_rows,
               errors=table.num_rows - table.column("error").null_count, **sums,
               # run.structured's reasons all say "invalid JSON" (also "completion k of n: invalid JSON: ...")
               invalid_json=int(pc.sum(pc.match_substring(table.column("error"), "invalid JSON")).as_py() or 0),
               cache_hit_rate=sums["cached_tokens"] / sums["prompt_tokens"] if sums["prompt_tokens"] else 0.0)
    return row


@dataclass
class Summary:
    """What a run did; printed at the end and saved as _batchgen/summary-<worker>.json."""

    job: str
    worker: str
    model: str
    engine: str
    engine_version: str
    device: str
    units: int
    rows_total: int
    rows_skipped: int
    counters: Counters = field(default_factory=Counters)
    wall_seconds: float = 0.0
    engine_start_seconds: float = 0.0
    generate_seconds: float = 0.0
    # Wall-clock (epoch seconds) of generation's start and end: a node's engines are compared on them.
    generate_started_at: float = 0.0
    generate_ended_at: float = 0.0
    # Epoch when the engine became ready (its start began engine_start_seconds before): engines sharing a
    # GPU start one after another, and this shows it.
    engine_ready_at: float = 0.0
    # Epoch when this run's last part was committed: its output complete as a reader sees it. Minus
    # generate_started_at, what a run took including its final commit (which generate_seconds leaves out).
    output_ended_at: float = 0.0
    # What the engine runs with, read back from it (vLLM: batch sizes, async scheduling, CUDA graphs, memory).
    engine_options: dict[str, Any] = field(default_factory=dict)
    # (epoch, cumulative rows finished), about one point a second (batchgen.run.timeline).
    timeline: list[tuple[float, int]] = field(default_factory=list)
    # Host CPU over the generation window, per process (this one, vLLM's EngineCore...): cores used and the
    # busiest thread's share of a core (batchgen.run.hostcpu). A thread near 1.0 sets the pace.
    host_cpu: list[dict[str, Any]] = field(default_factory=list)
    upload_retries: int = 0
    upload_wait_seconds: float = 0.0
    input_retries: int = 0
    interrupted: bool = False
    complete: bool = False

    @classmethod
    def begin(cls, spec: JobSpec, worker: str, units: Sequence[Unit], skipped: int) -> Summary:
        """A run's summary before it does anything: its share and what earlier runs committed of it."""
        return cls(job=spec.name or "job", worker=worker, model=spec.model.path, engine=spec.runtime.engine,
                   engine_version="-", device="-", units=len(units), rows_total=sum(u.rows for u in units),
                   rows_skipped=skipped)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        c = d.pop("counters")
        gen = max(self.generate_seconds, 1e-9)
        return {**d, **c, "cache_hit_rate": round(self.counters.cache_hit_rate, 4),
                "rows_per_second": round(self.counters.rows / gen, 3),
                "output_tokens_per_second": round(self.counters.output_tokens / gen, 1)}

    def lines(self) -> list[str]:
        d = self.as_dict()
        state = "interrupted (rerun to resume)" if self.interrupted else ("complete" if self.complete else "this worker's share done")
        return [
            f"batchgen summary [{self.job} / {self.worker}]: {state}",
            f"  rows      {d['rows']} generated this run, {d['errors']} errors"
            + (f" ({d['invalid_json']} invalid JSON)" if d["invalid_json"] else "")
            + f", {self.rows_skipped} already committed, {self.rows_total} in this share",
            f"  tokens    prompt {d['prompt_tokens']}, cached {d['cached_tokens']} (hit rate {d['cache_hit_rate']:.1%}), output {d['output_tokens']}",
            f"  speed     {d['rows_per_second']} rows/s, {d['output_tokens_per_second']} output tok/s over {self.generate_seconds:.1f}s",
            f"  time      wall {self.wall_seconds:.1f}s, engine start {self.engine_start_seconds:.1f}s, waiting on uploads {self.upload_wait_seconds:.1f}s"
            f" ({self.upload_retries} storage retries, {self.input_retries} input retries)",
            f"  engine    {self.engine} {self.engine_version} on {self.device}; model {self.model}",
        ] + ([f"  host CPU  {hostcpu.brief(self.host_cpu)} while generating"] if self.host_cpu else [])
