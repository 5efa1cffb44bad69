"""The report's header: what ran, on what, how long it took and how it ended, and what it cost.

From the workers' summaries (`_batchgen/summary-<worker>.json`, written when a run ends however it
ends, except SIGKILL), the stats rows and `_SUCCESS.json`. A summary describes its worker's last
run only; parts committed outside that run (an earlier run that was killed) still count in the
device time, by their spans.

A node run (`batchgen run` over all GPUs of a machine) writes one summary per engine (`<worker>-e<i>`)
and one for the node (`<worker>`): the header's times come from the node's, the device time from the
engines' (each engine is a worker with its own GPUs), so nothing is counted twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from batchgen.job.spec import JobSpec
from batchgen.ops.outputstate import OutputState
from batchgen.ops.status import JobStatus


@dataclass
class WorkerRun:
    """One worker as the report shows it: its last run's summary (if any) and its committed parts."""

    worker: str
    state: str
    summary: dict[str, Any] | None
    devices: int  # GPUs (or the CPU engine, counted as 1) this worker held
    device_seconds: float = 0.0  # wall of its last summarised run + spans of parts committed outside it
    node: bool = False  # a node's own summary: its engines are workers of their own


@dataclass
class RunFacts:
    job: str
    output: str
    complete: bool
    finished_at: float | None
    model: str
    engines: list[str]  # e.g. "vllm 0.32.0"
    devices: list[str]  # e.g. "cuda: NVIDIA H200"
    devices_per_worker: int
    devices_how: str
    runs: list[WorkerRun]
    wall_seconds: float | None
    engine_start_seconds: float | None
    generate_seconds: float | None
    rows_generated: int  # by the summarised runs
    output_tokens_generated: int
    generate_span: float | None  # first generation start to last generation end, over the summarised runs
    gpu_hour_price: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def on_gpu(self) -> bool:
        return any(not d.startswith("cpu") for d in self.devices)

    @property
    def device_hours(self) -> float:
        return sum(r.devices * r.device_seconds for r in self.runs if not r.node) / 3600

    def cost(self, output_tokens: int) -> tuple[float, float | None] | None:
        """(total, per 1M output tokens) at `gpu_hour_price`, or None without a price."""
        if self.gpu_hour_price is None:
            return None
        total = self.device_hours * self.gpu_hour_price
        return total, (total / output_tokens * 1e6 if output_tokens else None)

    @property
    def rows_per_second(self) -> float | None:
        return self.rows_generated / self.generate_span if self.generate_span else None

    @property
    def output_tokens_per_second(self) -> float | None:
        return self.output_tokens_generated / self.generate_span if self.generate_span else None


def gather_run_facts(spec: JobSpec, st: JobStatus, state: OutputState, gpu_hour_price: float | None) -> RunFacts:
    per, how = _devices_per_worker(spec)
    names = sorted({w.worker for w in st.workers} | set(state.ends))
    of_node = {other: n for n in names for other in names if re.fullmatch(re.escape(n) + r"-e\d+", other)}
    nodes = set(of_node.values())
    states = {w.worker: w.state for w in st.workers}
    runs = []
    for name in names:
        end = state.ends.get(name)
        summary = end.summary if end else None
        run = WorkerRun(name, states.get(name, "?"), summary, per, node=name in nodes)
        run.device_seconds = _device_seconds(run, end.written_at if end else None, state.stats)
        runs.append(run)
    top = [r.summary for r in runs if r.summary and r.worker not in of_node]  # nodes and plain workers
    leaves = [r.summary for r in runs if r.summary and not r.node]
    devices = sorted({s["device"] for s in leaves if s.get("device") not in (None, "-")})
    engines = sorted({f"{s['engine']} {s['engine_version']}" for s in leaves if s.get("engine_version") not in (None, "-")})
    started = [s["generate_started_at"] for s in leaves if s.get("generate_started_at")]
    ended = [s["generate_ended_at"] for s in leaves if s.get("generate_ended_at")]
    facts = RunFacts(
        job=st.job, output=st.output, complete=st.complete, finished_at=(state.success or {}).get("finished_at"),
        model=next((s["model"] for s in leaves if s.get("model")), spec.model.path), engines=engines, devices=devices,
        devices_per_worker=per, devices_how=how, runs=runs,
        wall_seconds=_longest(top, "wall_seconds"), engine_start_seconds=_longest(top, "engine_start_seconds"),
        generate_seconds=_longest(top, "generate_seconds"),
        rows_generated=sum(s.get("rows", 0) for s in leaves), output_tokens_generated=sum(s.get("output_tokens", 0) for s in leaves),
        generate_span=(max(ended) - min(started)) if started and ended else None, gpu_hour_price=gpu_hour_price)
    if len(top) > 1:
        facts.notes.append(f"times are the longest of {len(top)} workers' last runs (they run side by side)")
    kv = kv_cache_note([r for r in runs if r.summary and not r.node], spec.sampling.n)
    if kv:
        facts.notes.append(kv)
    return facts


def kv_cache_note(runs: list[WorkerRun], n: int) -> str | None:
    """Where an engine's KV cache (`engine_options.kv_cache_tokens`) held fewer tokens than its max_num_seqs
    sequences of this job's rows take at once, vLLM preempted running rows and computed them again (session 9
    of docs/benchmarks.md: two engines sharing an H100 held 287,712 tokens each, 1024 rows of S take ~328,000).
    A row in flight holds its prompt tokens not served from the prefix cache and, on average, half its output
    (all n completions); max_num_seqs counts sequences, n a row. The engine that falls shortest, or None."""
    short = []  # (need / held, worker, held, max_num_seqs, tokens a row in flight, tokens max_num_seqs take)
    for r in runs:
        s = r.summary
        opts = s.get("engine_options") or {}
        kv, seqs, ok = opts.get("kv_cache_tokens"), opts.get("max_num_seqs"), s.get("rows", 0) - s.get("errors", 0)
        if not (kv and seqs and ok > 0):
            continue
        per_row = (s.get("prompt_tokens", 0) - s.get("cached_tokens", 0) + s.get("output_tokens", 0) / 2) / ok
        need = seqs / n * per_row
        if per_row > 0 and need > kv:
            short.append((need / kv, r.worker, kv, seqs, per_row, need))
    if not short:
        return None
    _, worker, kv, seqs, per_row, need = max(short)
    fits = int(kv / per_row * n)
    return (f"KV cache: {worker}'s engine held {kv:,} tokens, but its {seqs:,} sequences (max_num_seqs) of this job's "
            f"rows take about {need:,.0f} at once ({per_row:,.0f} tokens a row in flight: its prompt not served from the "
            f"prefix cache and half its output), so vLLM had to preempt rows and compute them again; about {fits:,} sequences "
            f"fit: model.max_num_seqs at most that, or more memory per engine (model.gpu_memory_utilization), avoids it; "
            f"an fp8 KV cache (model.engine_kwargs.kv_cache_dtype: fp8) holds twice the tokens, at a cost in numerics")


def engine_starts(facts: RunFacts) -> dict[str, tuple[float, float]]:
    """worker -> (start, end) epoch seconds of its last run's engine start, for the timeline."""
    out = {}
    for r in facts.runs:
        s = r.summary
        if s and not r.node and s.get("generate_started_at") and s.get("engine_start_seconds"):
            out[r.worker] = (s["generate_started_at"] - s["engine_start_seconds"], s["generate_started_at"])
    return out


def _devices_per_worker(spec: JobSpec) -> tuple[int, str]:
    """GPUs per worker as the node supervisor assigns them: runtime.gpus_per_engine, else TP x PP."""
    if spec.runtime.gpus_per_engine:
        return spec.runtime.gpus_per_engine, f"runtime.gpus_per_engine = {spec.runtime.gpus_per_engine}"
    tp, pp = spec.model.tensor_parallel_size, int(spec.model.engine_kwargs.get("pipeline_parallel_size", 1))
    return tp * pp, f"model.tensor_parallel_size {tp} x pipeline_parallel_size {pp}"


def _device_seconds(run: WorkerRun, written_at: float | None, stats: list[dict[str, Any]]) -> float:
    """The wall time of the worker's last summarised run, plus the spans of its parts committed outside it."""
    s = run.summary
    window = None
    if s and s.get("wall_seconds") is not None:
        end = written_at or s.get("generate_ended_at") or 0.0
        window = (end - s["wall_seconds"] - 1.0, end + 1.0)
    outside = sum((p["span_seconds"] or 0.0) for p in stats if p["worker"] == run.worker and p["committed_at"] is not None
                  and not (window and window[0] <= p["committed_at"] <= window[1]))
    return (s["wall_seconds"] if window else 0.0) + outside


def _longest(summaries: list[dict[str, Any]], key: str) -> float | None:
    values = [s[key] for s in summaries if s.get(key) is not None]
    return max(values) if values else None
