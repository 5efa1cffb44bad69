"""The methods compared, each run in its own process on the same model folder, prompts and engine options.

raw one call      `LLM.generate(all_prompts)`
raw calls of N    `LLM.generate` on N prompts at a time (hand-written chunking)
batchgen          `batchgen run job.yaml`: Parquet in, a commit every few seconds, Parquet out
batchgen 1 commit the same with a single commit at the end (what checkpointing costs)
"""

from __future__ import annotations

import json
import os
import re
import signal
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from benchmarks.workloads import Workload

ROOT = Path(__file__).resolve().parent.parent
WORKER = "bench"


@dataclass(frozen=True)
class Method:
    name: str
    kind: str  # "raw" or "batchgen"
    chunk: int = 0  # raw: prompts per generate call (0: all in one)
    commit_seconds: float | None = 5.0  # batchgen: commit every N seconds; None: one commit at the end


@dataclass(frozen=True)
class Setup:
    """What every method of one workload shares."""

    workload: Workload
    model: Path
    prompts: Path
    work: Path
    engine: dict  # vLLM engine options, given to LLM(...) and to the job's `model:` section alike
    temperature: float = 0.0
    batchgen_sets: list[str] = field(default_factory=list)  # extra `--set` overrides for batchgen


def methods(chunk: int, *, one_commit: bool) -> list[Method]:
    out = [Method("raw one call", "raw"), Method(f"raw calls of {chunk}", "raw", chunk=chunk), Method("batchgen", "batchgen")]
    if one_commit:
        out.append(Method("batchgen 1 commit", "batchgen", commit_seconds=None))
    return out


def run_method(m: Method, setup: Setup, timeout: float) -> dict:
    """Run one method in a child process; a failure or timeout becomes a result with `status` set."""
    slug = re.sub(r"[^a-z0-9]+", "-", m.name.lower()).strip("-")
    if setup.batchgen_sets and m.kind == "batchgen":  # a variant must not overwrite the default's folder and log
        slug += "-" + re.sub(r"[^a-z0-9]+", "-", "-".join(setup.batchgen_sets).lower()).strip("-")[:60]
    folder = setup.work / f"{setup.workload.name}-{slug}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    cmd = _raw_command(m, setup, folder) if m.kind == "raw" else _batchgen_command(m, setup, folder)
    log = folder / "log.txt"
    t0 = time.monotonic()
    status = "ok"
    with log.open("w") as f:
        # Own process group: on a timeout vLLM's engine-core child must die too, or it keeps the GPU's memory.
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc, status = -1, "timeout"
        finally:
            _kill_group(proc)
    process_s = time.monotonic() - t0
    text = log.read_text(errors="replace")
    if status == "ok" and rc != 0:
        status = f"failed (exit {rc})"
    result: dict = {"method": m.name, "kind": m.kind, "status": status, "process_s": process_s, "log": str(log)}
    if status == "ok":
        try:
            result.update(_raw_result(folder) if m.kind == "raw" else _batchgen_result(folder, setup))
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            status = result["status"] = f"failed ({e})"
        mbt = re.findall(r"max_num_batched_tokens=(\d+)", text)
        result.setdefault("max_num_batched_tokens", int(mbt[-1]) if mbt else None)
    if status != "ok":
        result["log_tail"] = "\n".join(text.splitlines()[-25:])
    return result


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    proc.wait()


def _raw_command(m: Method, setup: Setup, folder: Path) -> list[str]:
    cfg = {"model": str(setup.model), "prompts": str(setup.prompts), "engine": setup.engine,
           "max_tokens": setup.workload.output_tokens, "temperature": setup.temperature, "chunk": m.chunk,
           "sampling": setup.workload.sampling}
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    return [sys.executable, "-m", "benchmarks.raw", str(folder / "config.json"), str(folder / "result.json")]


def _raw_result(folder: Path) -> dict:
    return json.loads((folder / "result.json").read_text())


def batchgen_job(m: Method, setup: Setup, out: Path) -> dict:
    """The job file a user would write for this workload."""
    commit = ({"every_seconds": m.commit_seconds} if m.commit_seconds
              else {"every_rows": 10**9, "every_seconds": 1e9})
    return {
        "name": f"bench-{setup.workload.name}",
        "input": {"path": str(setup.prompts)},
        "prompt": {"column": "prompt"},
        "model": {"path": str(setup.model), **setup.engine},
        # Structured workloads end where their grammar does (ignore_eos would let text run on past it).
        "sampling": {"temperature": setup.temperature, "max_tokens": setup.workload.output_tokens,
                     "ignore_eos": not setup.workload.sampling, **setup.workload.sampling},
        "output": {"path": str(out)},
        "checkpoint": commit,
        "runtime": {"progress": "lines", "progress_seconds": 10},
    }


def _batchgen_command(m: Method, setup: Setup, folder: Path) -> list[str]:
    job = folder / "job.yaml"
    job.write_text(yaml.safe_dump(batchgen_job(m, setup, folder / "out"), sort_keys=False))
    sets = [a for s in setup.batchgen_sets for a in ("--set", s)]
    return [sys.executable, "-m", "batchgen", "run", str(job), "--worker-id", WORKER, *sets]


def _batchgen_result(folder: Path, setup: Setup) -> dict:
    from batchgen.engine.vllm import GPU_DEFAULT_MAX_NUM_SEQS

    out, expected_rows = folder / "out", setup.workload.rows
    s = json.loads((out / "_batchgen" / f"summary-{WORKER}.json").read_text())
    ids = pq.read_table(out / "parts", columns=["id"]).column(0)
    if len(ids) != expected_rows or len(ids.unique()) != expected_rows:
        raise RuntimeError(f"batchgen wrote {len(ids)} rows ({len(ids.unique())} distinct ids), expected {expected_rows}")
    parts = len(list((out / "parts").glob("*.parquet")))
    return {
        "rows": s["rows"], "errors": s["errors"], "prompt_tokens": s["prompt_tokens"], "cached_tokens": s["cached_tokens"],
        "output_tokens": s["output_tokens"], "engine_start_s": s["engine_start_seconds"],
        "generate_s": s["generate_seconds"], "wall_s": s["wall_seconds"], "vllm_version": s["engine_version"],
        "device": s["device"], "parts": parts, "upload_wait_s": s["upload_wait_seconds"],
        # Not in the summary: the job's value, else batchgen's GPU default (vLLM's own on CPU).
        "max_num_seqs": setup.engine.get("max_num_seqs") or (GPU_DEFAULT_MAX_NUM_SEQS if "cuda" in s["device"].lower() else None),
    }
