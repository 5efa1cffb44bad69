"""Several engines on one GPU group (`runtime.engines_per_gpu`): how many, how they split its memory,
and whether they start together or one after another.

A small model's engine leaves part of its GPU unused (short kernels, gaps between steps); a second
engine process fills it, side by side under MPS (batchgen.node.mps), in turns without it. vLLM sizes its
KV cache by profiling the device's free memory, and another process allocating or freeing memory
meanwhile makes that profile fail (seen on an H200 with vLLM 0.26: two engines started together at 0.4
each, the second's engine core failed to initialize). With an explicit KV cache size
(`kv_cache_memory_bytes`) vLLM skips the profile, so batchgen gives each engine of a GPU its share of the
device as explicit KV bytes (`shared_kv_bytes`) and starts them all at once (`plan_shared_start`); a
second engine started after the first was ready joined a 41 s run 21 s late. Where no size can be made
explicit (GPU memory or model size unknown), each engine process starts at once (imports, the plan, the
tokenizer), then waits at its gate until the previous engine on its GPU is ready, or exited.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from batchgen.engine import Engine, preload_engine
from batchgen.engine.dims import read_dims
from batchgen.job.spec import JobSpec, ModelSpec, RuntimeSpec

log = logging.getLogger("batchgen")

# `engines_per_gpu: auto` (the default): single-GPU engines of models below AUTO_SHARE_BELOW_PARAMS parameters
# run AUTO_SHARED_ENGINES per GPU where MPS serves them; other models, CPU engines, and GPUs without MPS one.
# Measured with vLLM 0.26 (docs/benchmarks.md), the 0.6B shape, medians of 2 interleaved rounds on an H100
# (session 7, engines started together): two engines under MPS ran S (20,000 rows) at 1.14x the tuned raw
# loop (one engine: 1.09x) and SYN (n=4) at 1.07x (one engine: 0.90x); S-T 0.99x of one engine (one run).
# Without MPS they take turns, and lost (session 5, H200: 0.92x of one engine).
AUTO_SHARE_BELOW_PARAMS = 1e9
AUTO_SHARED_ENGINES = 2
GATE_POLL_SECONDS = 0.2


def resolve_engines_per_gpu(runtime: RuntimeSpec, model: ModelSpec, *, on_gpu: bool = False, mps: bool = False) -> int:
    """The number of engines per GPU group; `auto` shares a GPU only between engines of a small model (size from
    its config.json) on one GPU each, under MPS (`mps`: batchgen.node.mps.mps_available)."""
    if runtime.engines_per_gpu != "auto":
        return runtime.engines_per_gpu
    tp = model.tensor_parallel_size * int(model.engine_kwargs.get("pipeline_parallel_size", 1))
    dims = read_dims(model.path)
    if runtime.engine != "vllm" or not on_gpu or not mps or dims is None or tp > 1 or (runtime.gpus_per_engine or 1) > 1:
        return 1
    return AUTO_SHARED_ENGINES if dims.params() < AUTO_SHARE_BELOW_PARAMS else 1


def share_overrides(model: ModelSpec, k: int, kv_bytes: int | None = None) -> list[str]:
    """`--set` arguments giving one of k engines sharing a device its 1/k of the job's memory budget
    (`kv_bytes`: the KV cache size batchgen derived for each, see shared_kv_bytes)."""
    if k <= 1:
        return []
    sets = [f"model.gpu_memory_utilization={math.floor(model.gpu_memory_utilization / k * 10_000) / 10_000}",
            f"runtime.engines_per_gpu={k}"]
    kv = model.engine_kwargs.get("kv_cache_memory_bytes")
    if kv:
        sets.append(f"model.engine_kwargs.kv_cache_memory_bytes={int(kv) // k}")
    elif kv_bytes:
        sets.append(f"model.engine_kwargs.kv_cache_memory_bytes={kv_bytes}")
    return [a for s in sets for a in ("--set", s)]


# The part of an engine's share of a GPU left out of its explicit KV cache, beside the weights: CUDA context,
# activations of the largest step, sampler buffers, CUDA graphs. vLLM 0.26's own profile of the 0.6B shape
# with 1024 sequences and 16,384 batched tokens (H100, session 7): 0.44 GiB peak activation, 0.22 GiB
# non-torch, 0.82 GiB CUDA graphs; the margin is more than twice that.
SHARE_MARGIN_BYTES = 4 << 30
SHARE_MARGIN_FRACTION = 0.10
MIN_SHARED_KV_BYTES = 1 << 30


@dataclass(frozen=True)
class SharedStart:
    """How the engines of a shared GPU start: together (each with this KV size, if batchgen sets it) or one by one."""

    together: bool
    kv_cache_memory_bytes: int | None  # per engine, derived by batchgen; None: the job's own size or vLLM's profile
    why: str


def shared_kv_bytes(model: ModelSpec, k: int, device_bytes: int | None) -> int | None:
    """Each of k engines' KV cache on a GPU of `device_bytes`: its 1/k of gpu_memory_utilization, less the
    weights (config.json; 2 bytes a parameter, 4 for float32: an upper bound for quantized weights) and a
    margin. None where the device's memory or the model's size is unknown, or the share is too small."""
    dims = read_dims(model.path)
    if device_bytes is None or dims is None:
        return None
    share = model.gpu_memory_utilization * device_bytes / k
    weights = dims.params() * (4 if model.dtype in ("float32", "float") else 2)
    kv = int(share - weights - max(SHARE_MARGIN_BYTES, SHARE_MARGIN_FRACTION * share))
    return kv if kv >= MIN_SHARED_KV_BYTES else None


def plan_shared_start(runtime: RuntimeSpec, model: ModelSpec, k: int, device_bytes: int | None, on_gpu: bool) -> SharedStart:
    """`runtime.shared_start` resolved for k engines per device (see its description in job/spec.py)."""
    if k <= 1:
        return SharedStart(True, None, "one engine per device")
    if runtime.shared_start == "one_by_one":
        return SharedStart(False, None, "runtime.shared_start: one_by_one")
    if model.engine_kwargs.get("kv_cache_memory_bytes"):
        return SharedStart(True, None, "engine_kwargs.kv_cache_memory_bytes sizes each KV cache")
    if not on_gpu:
        return SharedStart(True, None, "CPU engines: VLLM_CPU_KVCACHE_SPACE sizes each KV cache")
    kv = shared_kv_bytes(model, k, device_bytes)
    if kv is not None:
        return SharedStart(True, kv, f"each engine gets {kv / 2**30:.1f} GiB of KV cache")
    unknown = "the GPU's memory (NVML)" if device_bytes is None else "the model's size (config.json)"
    if runtime.shared_start == "together":
        log.warning("engines start together as asked, but %s is unknown: vLLM profiles memory that another engine is "
                    "taking; set model.engine_kwargs.kv_cache_memory_bytes if an engine fails to start", unknown)
        return SharedStart(True, None, "runtime.shared_start: together")
    return SharedStart(False, None, f"{unknown} unknown: no explicit KV cache size")


def share_env(env: Mapping[str, str], k: int) -> dict[str, str]:
    """vLLM's CPU backend sizes its KV cache from VLLM_CPU_KVCACHE_SPACE (whole GiB) per process: split it."""
    out = dict(env)
    space = out.get("VLLM_CPU_KVCACHE_SPACE", "")
    if k > 1 and space.isdigit():
        each = max(1, int(space) // k)
        if each * k > int(space):
            log.warning("VLLM_CPU_KVCACHE_SPACE=%s GiB cannot be split in %d whole GiB: each engine gets %d", space, k, each)
        out["VLLM_CPU_KVCACHE_SPACE"] = str(each)
    return out


class StartGates:
    """Files in a private folder: engine i writes `ready-i` once its engine is up; engine i waits for `go-i`,
    which the supervisor creates once engine i-1 (same GPU group) is ready or has exited."""

    def __init__(self, engines: int, per_group: int):
        self.engines, self.k = engines, per_group
        self.folder = Path(tempfile.mkdtemp(prefix="batchgen-start-")) if per_group > 1 else None
        self.opened: set[int] = {i for i in range(engines) if per_group <= 1 or i % per_group == 0}

    def args(self, index: int) -> list[str]:
        """The engine's flags: where to say it is ready, and (if it must wait) what to wait for."""
        if self.folder is None:
            return []
        out = ["--ready-file", str(self.folder / f"ready-{index}")]
        if index not in self.opened:
            out += ["--start-file", str(self.folder / f"go-{index}")]
        return out

    def open_due(self, exited: Callable[[int], bool]) -> None:
        """Open the gate of every engine whose predecessor is ready or gone."""
        for i in range(self.engines):
            if i in self.opened:
                continue
            before = i - 1
            ready = (self.folder / f"ready-{before}").exists()
            if ready or exited(before):
                (self.folder / f"go-{i}").touch()
                self.opened.add(i)
                log.info("engine e%d: e%d %s, e%d starts its engine", i, before,
                         "is ready" if ready else "exited", i)

    def close(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def gated_engine_factory(start: Callable[[JobSpec], Engine], start_file: Path | None,
                         ready_file: Path | None) -> Callable[[JobSpec], Engine]:
    """`start` for an engine of a shared GPU: import vLLM, wait for the gate, start the engine, say so."""
    def factory(spec: JobSpec) -> Engine:
        if start_file is not None:
            preload_engine(spec)  # the imports overlap the previous engine's start; only the engine itself waits
            t0 = time.monotonic()
            while not start_file.exists():
                time.sleep(GATE_POLL_SECONDS)
            log.info("engine start: waited %.1fs for the previous engine on this GPU", time.monotonic() - t0)
        engine = start(spec)
        if ready_file is not None:
            tmp = ready_file.with_suffix(".tmp")
            tmp.write_text(str(os.getpid()))
            tmp.replace(ready_file)
        return engine
    return factory
