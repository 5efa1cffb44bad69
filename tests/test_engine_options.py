"""The engine's effective options, read back from vLLM's config after it started (what summaries record and
the benchmark's raw loop is given)."""

from __future__ import annotations

import pytest


@pytest.mark.engine
def test_engine_reports_the_options_vllm_resolved(vllm_engine):
    o = vllm_engine.info.options
    # Set by the job (tests/conftest.py job_dict) ...
    assert (o["max_model_len"], o["enforce_eager"], o["gpu_memory_utilization"]) == (512, True, 0.05)
    assert o["enable_prefix_caching"] is True and o["enable_chunked_prefill"] is True
    # ... and resolved by vLLM: the LLM class's CPU batch sizes, no async scheduling and no CUDA graphs on CPU.
    assert (o["max_num_seqs"], o["max_num_batched_tokens"]) == (256, 4096)
    assert o["async_scheduling"] is False and o["cudagraph_capture_sizes"] == [] and o["stream_interval"] == 1
    assert o["kv_cache_memory_bytes"] == 2**30  # VLLM_CPU_KVCACHE_SPACE=1 (tests/conftest.py)
    assert o["dtype"] in ("bfloat16", "float32", "float16")
