"""Running one process of a round (a batchgen job, a raw loop, run_batch) and reading back its figures.

Every process runs in its own process group, so a timeout (or the harness being stopped) kills vLLM's
engine-core children too, which would otherwise keep the GPU's memory. Its log stays in its folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from benchmarks import options as opts
from benchmarks.gpubusy import GpuBusy
from benchmarks.methods import Method, Setup
from benchmarks.sampling import job_sampling

ROOT = Path(__file__).resolve().parent.parent
WORKER = "bench"


def run_group(group: list[Method], setup: Setup, round_index: int, reference: dict | None, timeout: float) -> list[dict]:
    """Run `group` (one process) and return one result per method; failures become results with `status` set."""
    if any(m.tuned for m in group) and reference is None:
        return [_base(m, round_index, "skipped (no batchgen engine options yet)") for m in group]
    wl = setup.workload
    folder = setup.work / f"{wl.name}-{wl.rows}-r{round_index}-{'+'.join(m.slug for m in group)}"[:200]
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    kind = group[0].kind
    if kind == "raw":
        cmd = _raw_command(group, setup, folder, reference)
    elif kind == "run_batch":
        cmd = _run_batch_command(group[0], setup, folder, reference)
    else:
        cmd = _batchgen_command(group[0], setup, folder)
    with GpuBusy() as busy:
        status, process_s = _run(cmd, folder / "log.txt", timeout)
    results = []
    for m in group:
        r = _base(m, round_index, status)
        r.update(process_s=process_s, log=str(folder / "log.txt"))
        try:
            r.update(_collect(m, folder, setup))
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            if r["status"] == "ok":
                r["status"] = f"failed ({e})"
        else:
            if r["status"] != "ok" and r.get("generate_s"):  # a raw call that finished before the process was cut
                r["status"] = "ok"
        busy_share = busy.mean(r.get("started_at"), r.get("ended_at"))
        if busy_share is not None:
            r["gpu_busy"] = busy_share
        if r["status"] == "ok" and reference is not None and m.tuned and r.get("engine_options"):
            r["options_diff"] = opts.differences(r["engine_options"], reference)
        if r["status"] != "ok":
            r["log_tail"] = _tail(folder / "log.txt")
        results.append(r)
    return results


def _base(m: Method, round_index: int, status: str) -> dict:
    return {"method": m.name, "kind": m.kind, "round": round_index, "status": status}


def _run(cmd: list[str], log: Path, timeout: float) -> tuple[str, float]:
    t0 = time.monotonic()
    status = "ok"
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
            if rc != 0:
                status = f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            status = "timeout"
        except BaseException:  # the harness is being stopped: take the engine down with it
            _kill_group(proc)
            raise
        finally:
            _kill_group(proc)
    return status, time.monotonic() - t0


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _tail(log: Path, lines: int = 25) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _collect(m: Method, folder: Path, setup: Setup) -> dict:
    if m.kind == "raw":
        return _raw_result(m, folder)
    if m.kind == "run_batch":
        return json.loads((folder / "result.json").read_text())
    return _batchgen_result(folder, setup)


# -- the raw loop ---------------------------------------------------------------------------------
def _raw_command(group: list[Method], setup: Setup, folder: Path, reference: dict | None) -> list[str]:
    engine = opts.tuned_engine(reference, setup.engine) if group[0].tuned else setup.engine
    cfg = {"model": str(setup.model), "prompts": str(setup.prompts), "engine": engine,
           "max_tokens": setup.workload.output_tokens, "sampling": setup.workload.sampling,
           "calls": [{"method": m.name, "chunk": m.chunk} for m in group]}
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    return [sys.executable, "-m", "benchmarks.raw", str(folder / "config.json"), str(folder / "result.json")]


def _raw_result(m: Method, folder: Path) -> dict:
    doc = json.loads((folder / "result.json").read_text())
    call = next((c for c in doc["calls"] if c["method"] == m.name), None)
    if call is None:
        raise RuntimeError("this call did not finish")
    shared = {k: doc[k] for k in ("engine_start_s", "vllm_version", "device", "engine_options")}
    return {**shared, **call}


# -- vLLM's run_batch -----------------------------------------------------------------------------
def _run_batch_command(m: Method, setup: Setup, folder: Path, reference: dict | None) -> list[str]:
    if setup.requests is None:
        raise ValueError(f"run_batch is not measured on the structured workload {setup.workload.name}: pick other methods")
    engine = opts.tuned_engine(reference, setup.engine) if m.tuned else setup.engine
    return [sys.executable, "-m", "benchmarks.runbatch", str(folder / "result.json"),
            "-i", str(setup.requests), "-o", str(folder / "out.jsonl"), "--model", str(setup.model),
            "--seed", "0", "--enable-prompt-tokens-details", "--disable-log-stats", *opts.cli_flags(engine)]


# -- batchgen -------------------------------------------------------------------------------------
def batchgen_job(m: Method, setup: Setup, out: Path) -> dict:
    """The job file a user would write for this workload."""
    from batchgen.job.spec import ModelSpec

    commit = ({"every_seconds": m.commit_seconds} if m.commit_seconds
              else {"every_rows": 10**9, "every_seconds": 1e9})
    named = {k: v for k, v in setup.engine.items() if k in ModelSpec.model_fields}
    extra = {k: v for k, v in setup.engine.items() if k not in ModelSpec.model_fields}
    return {
        "name": f"bench-{setup.workload.name}",
        "input": {"path": str(setup.prompts)},
        "prompt": {"column": "prompt"},
        "model": {"path": str(setup.model), **named, **({"engine_kwargs": extra} if extra else {})},
        "sampling": job_sampling(setup.workload.sampling, setup.workload.output_tokens),
        "output": {"path": str(out)},
        "checkpoint": commit,
        "runtime": {"progress": "lines", "progress_seconds": 10},
    }


def _batchgen_command(m: Method, setup: Setup, folder: Path) -> list[str]:
    job = folder / "job.yaml"
    job.write_text(yaml.safe_dump(batchgen_job(m, setup, folder / "out"), sort_keys=False))
    sets = [a for s in [*setup.batchgen_sets, *m.sets] for a in ("--set", s)]
    return [sys.executable, "-m", "batchgen", "run", str(job), "--worker-id", WORKER, *sets]


def _batchgen_result(folder: Path, setup: Setup) -> dict:
    out, expected_rows = folder / "out", setup.workload.rows
    meta = out / "_batchgen"
    s = json.loads((meta / f"summary-{WORKER}.json").read_text())
    ids = pq.read_table(out / "parts", columns=["id"]).column(0)
    if len(ids) != expected_rows or len(ids.unique()) != expected_rows:
        raise RuntimeError(f"batchgen wrote {len(ids)} rows ({len(ids.unique())} distinct ids), expected {expected_rows}")
    engines = [json.loads(p.read_text()) for p in sorted(meta.glob(f"summary-{WORKER}-e*.json"))]
    result = {
        "rows": s["rows"], "errors": s["errors"], "prompt_tokens": s["prompt_tokens"], "cached_tokens": s["cached_tokens"],
        "output_tokens": s["output_tokens"], "engine_start_s": s["engine_start_seconds"],
        "generate_s": s["generate_seconds"], "wall_s": s["wall_seconds"], "vllm_version": s["engine_version"],
        "device": s["device"], "parts": len(list((out / "parts").glob("*.parquet"))),
        "upload_wait_s": s["upload_wait_seconds"], "engine_options": s.get("engine_options") or {},
        "host_cpu": s.get("host_cpu") or [], "started_at": s.get("generate_started_at"), "ended_at": s.get("generate_ended_at"),
    }
    if s.get("output_ended_at") and s.get("generate_started_at"):  # to the last commit: what checkpointing is judged on
        result["output_s"] = s["output_ended_at"] - s["generate_started_at"]
    if engines:
        result.update(engines_figures(engines))
    return result


def engines_figures(engines: list[dict]) -> dict:
    """Engines of one node: their rows/s, how far apart they became ready, and the node's rows/s while all
    of them were generating (from their timelines: the steady rate a long job runs at)."""
    ready = [e["engine_ready_at"] for e in engines if e.get("engine_ready_at")]
    out: dict = {"engine_rows": [e["rows"] for e in engines],
                 "engine_req_s": [round(e["rows_per_second"], 1) for e in engines],
                 "ready_spread_s": round(max(ready) - min(ready), 1) if len(ready) > 1 else 0.0}
    lines = [e.get("timeline") or [] for e in engines]
    if len(engines) > 1 and all(len(t) >= 2 for t in lines):
        a = max(t[0][0] for t in lines)  # every engine has started generating
        b = min(t[-1][0] for t in lines)  # until the first one finished
        if b - a >= 5.0:
            rows = sum(_at(t, b) - _at(t, a) for t in lines)
            out.update(all_engines_req_s=round(rows / (b - a), 1), all_engines_s=round(b - a, 1))
    return out


def _at(timeline: list, t: float) -> float:
    """Rows finished at time t, interpolated between the timeline's points."""
    prev = timeline[0]
    for point in timeline:
        if point[0] >= t:
            span = point[0] - prev[0]
            return prev[1] + (point[1] - prev[1]) * ((t - prev[0]) / span if span else 1.0)
        prev = point
    return timeline[-1][1]
