"""The engine options of a fair comparison: the ones batchgen's engine ended up with, read back from it.

batchgen records its engine's effective options in its summary (`engine_options`, read from vLLM's
config after the engine started: batch sizes, async scheduling, CUDA-graph sizes, memory). The raw
loop and run_batch "with batchgen's options" are given exactly those, and their own engines' options
are read back the same way and compared: a difference is shown in the table, never hidden.
"""

from __future__ import annotations

from typing import Any

# Passed on as they are (all are vLLM EngineArgs fields and run_batch flags of the same names).
PASSED = ("max_num_seqs", "max_num_batched_tokens", "async_scheduling", "enable_chunked_prefill", "stream_interval",
          "enable_prefix_caching", "enforce_eager", "max_model_len", "dtype")
# Compared after the run; the memory budget and KV size are per engine, so engines sharing a GPU scale them.
COMPARED = PASSED + ("gpu_memory_utilization", "cudagraph_capture_sizes")


def one_engine(options: dict[str, Any]) -> dict[str, Any]:
    """batchgen's options as one engine with the whole device would have them (k engines sharing a GPU
    each had 1/k of gpu_memory_utilization and of the job's explicit KV cache size; a size batchgen derived
    for engines started together is dropped: one engine sizes its own by vLLM's profile)."""
    k = int(options.get("engines_per_gpu") or 1)
    out = {key: v for key, v in options.items() if key not in ("engines_per_gpu", "mps", "shared_start", "shared_kv_derived")}
    if k > 1:
        out["gpu_memory_utilization"] = round(options["gpu_memory_utilization"] * k, 4)
        if options.get("shared_kv_derived"):
            out.pop("kv_cache_memory_bytes", None)
        elif options.get("kv_cache_memory_bytes"):
            out["kv_cache_memory_bytes"] = options["kv_cache_memory_bytes"] * k
    return out


def tuned_engine(options: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """LLM(...) keyword arguments: `base` (model-level: load format, ...) with batchgen's effective options."""
    opts = one_engine(options)
    out = dict(base)
    out.update({k: opts[k] for k in PASSED if opts.get(k) is not None})
    out["gpu_memory_utilization"] = opts["gpu_memory_utilization"]
    if opts.get("kv_cache_memory_bytes"):
        out["kv_cache_memory_bytes"] = opts["kv_cache_memory_bytes"]
    if opts.get("cudagraph_capture_sizes"):  # empty on CPU and with enforce_eager: nothing to capture
        out["cudagraph_capture_sizes"] = list(opts["cudagraph_capture_sizes"])
    return out


def differences(got: dict[str, Any], reference: dict[str, Any]) -> dict[str, list]:
    """{option: [got, reference]} for every compared option on which an engine differs from batchgen's."""
    ref = one_engine(reference)
    return {k: [got.get(k), ref.get(k)] for k in COMPARED if k in ref and got.get(k) != ref.get(k)}


def cli_flags(engine: dict[str, Any]) -> list[str]:
    """vLLM command-line flags for engine keyword arguments (run_batch takes EngineArgs as flags)."""
    flags: list[str] = []
    for key, value in engine.items():
        name = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(name if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            flags += [name, *map(str, value)]
        elif value is not None:
            flags += [name, str(value)]
    return flags


def brief(options: dict[str, Any]) -> str:
    """A short line for the table: what matters for speed."""
    if not options:
        return "–"
    sizes = options.get("cudagraph_capture_sizes") or []
    parts = [f"seqs {options.get('max_num_seqs')}", f"tokens {options.get('max_num_batched_tokens')}",
             f"async {'on' if options.get('async_scheduling') else 'off'}",
             f"graphs ≤{max(sizes)}" if sizes else "no graphs", f"mem {options.get('gpu_memory_utilization')}"]
    if options.get("kv_cache_tokens"):
        parts.append(f"KV {options['kv_cache_tokens'] / 1000:.0f}k tokens")
    if (options.get("stream_interval") or 1) != 1:
        parts.append(f"stream {options['stream_interval']}")
    if (options.get("engines_per_gpu") or 1) > 1:
        parts.append(f"{options['engines_per_gpu']} engines/GPU" + (" under MPS" if options.get("mps") else ""))
    return ", ".join(parts)
