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


def test_batchgen_leaves_async_scheduling_and_graph_sizes_to_vllm_unless_asked():
    """vLLM turns async scheduling on by itself on GPUs (0.26 and 0.32) and sizes CUDA graphs from max_num_seqs:
    batchgen passes neither unless the job does (model.engine_kwargs), so `--set` can try both ways."""
    from batchgen.engine.vllm import GPU_DEFAULT_MAX_NUM_SEQS, engine_args_dict
    from batchgen.job.spec import ModelSpec

    args = engine_args_dict(ModelSpec(path="m"), on_gpu=True)
    assert args["max_num_seqs"] == GPU_DEFAULT_MAX_NUM_SEQS == 512
    assert not {"async_scheduling", "stream_interval", "cudagraph_capture_sizes", "max_cudagraph_capture_size"} & set(args)
    asked = engine_args_dict(ModelSpec(path="m", max_num_seqs=1024, engine_kwargs={
        "async_scheduling": False, "max_cudagraph_capture_size": 1024, "stream_interval": 8}), on_gpu=True)
    assert (asked["async_scheduling"], asked["max_cudagraph_capture_size"], asked["max_num_seqs"]) == (False, 1024, 1024)


def test_gpu_batch_size_by_model_size_and_graphs_that_cover_it(tmp_path):
    """On a GPU a model below 1B parameters gets 1024 sequences per step and CUDA graphs up to 1024 (H200: the
    0.6B shape ran 1.25x faster so, docs/benchmarks.md); larger models keep 512, inside vLLM's own graph sizes."""
    import json

    from batchgen.engine.vllm import engine_args_dict
    from batchgen.job.spec import ModelSpec

    def folder(name, **cfg):
        path = tmp_path / name
        path.mkdir()
        base = {"hidden_size": 1024, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
                "head_dim": 128, "intermediate_size": 3072, "vocab_size": 151936, "tie_word_embeddings": True}
        (path / "config.json").write_text(json.dumps({**base, **cfg}))
        return str(path)

    small = folder("qwen3-0.6b")
    big = folder("llama-8b", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=14336,
                 vocab_size=128256, tie_word_embeddings=False)
    args = engine_args_dict(ModelSpec(path=small), on_gpu=True)
    assert (args["max_num_seqs"], args["max_cudagraph_capture_size"]) == (1024, 1024)
    assert engine_args_dict(ModelSpec(path=big), on_gpu=True)["max_num_seqs"] == 512
    assert "max_cudagraph_capture_size" not in engine_args_dict(ModelSpec(path=big), on_gpu=True)
    assert engine_args_dict(ModelSpec(path=big, max_num_seqs=768), on_gpu=True)["max_cudagraph_capture_size"] == 768
    assert "max_num_seqs" not in engine_args_dict(ModelSpec(path=small), on_gpu=False)  # CPU: vLLM's own
    own = engine_args_dict(ModelSpec(path=small, engine_kwargs={"cudagraph_capture_sizes": [1, 8, 64]}), on_gpu=True)
    assert own["cudagraph_capture_sizes"] == [1, 8, 64] and "max_cudagraph_capture_size" not in own
    assert "max_cudagraph_capture_size" not in engine_args_dict(ModelSpec(path=small, enforce_eager=True), on_gpu=True)
