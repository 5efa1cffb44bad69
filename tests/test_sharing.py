"""Several engines on one GPU group (runtime.engines_per_gpu): layout, memory split, start together or staged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from batchgen.errors import SpecError
from batchgen.job.spec import ModelSpec, RuntimeSpec
from batchgen.engine.dims import ModelDims, read_dims
from batchgen.node import sharing
from batchgen.node.sharing import (StartGates, plan_shared_start, resolve_engines_per_gpu, share_env, share_overrides,
                                   shared_kv_bytes)
from batchgen.node.mps import mps_available
from batchgen.node.supervisor import EngineLayout, engine_layout
from tests.conftest import ROOT, job_dict, write_job, write_shards
from tests.outputs import texts_each_id_once

QWEN_06B = {"hidden_size": 1024, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
            "head_dim": 128, "intermediate_size": 3072, "vocab_size": 151936, "tie_word_embeddings": True}
LLAMA_8B = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "intermediate_size": 14336, "vocab_size": 128256}


@pytest.mark.parametrize("runtime, gpus, expected", [
    ({"engines_per_gpu": 2}, ["0"], (2, (("0",), ("0",)))),
    ({"engines_per_gpu": 2}, ["0", "1"], (4, (("0",), ("0",), ("1",), ("1",)))),
    ({"engines_per_gpu": 2, "num_engines": 3}, ["0", "1"], (3, (("0",), ("0",), ("1",)))),
    ({"engines_per_gpu": 3}, [], (3, ((), (), ()))),  # CPU engines: k of them share the host
    ({"engines_per_gpu": 2, "num_engines": 1}, ["0"], (1, (("0",),))),
])
def test_engine_layout_shares_gpu_groups(runtime, gpus, expected):
    layout = engine_layout(RuntimeSpec(**runtime), ModelSpec(path="m"), gpus)
    assert (layout.num_engines, layout.groups) == expected
    assert layout.engines_per_gpu == min(runtime["engines_per_gpu"], expected[0])


def test_engine_layout_refuses_more_shared_engines_than_gpus_hold():
    with pytest.raises(SpecError, match="at most 4"):
        engine_layout(RuntimeSpec(engines_per_gpu=2, num_engines=5), ModelSpec(path="m"), ["0", "1"])


def test_auto_shares_gpus_for_small_models_under_mps_only(tmp_path, monkeypatch):
    for name, cfg in (("small", QWEN_06B), ("big", LLAMA_8B)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
    auto = RuntimeSpec()
    assert auto.engines_per_gpu == "auto"  # the default
    small, big = ModelSpec(path=str(tmp_path / "small")), ModelSpec(path=str(tmp_path / "big"))
    gpu = {"on_gpu": True, "mps": True}
    assert resolve_engines_per_gpu(auto, small, **gpu) == 2
    assert resolve_engines_per_gpu(auto, big, **gpu) == 1
    assert resolve_engines_per_gpu(auto, small, on_gpu=True, mps=False) == 1  # taking turns lost (0.92x)
    assert resolve_engines_per_gpu(auto, small, on_gpu=False, mps=True) == 1  # CPU engines: never by default
    assert resolve_engines_per_gpu(RuntimeSpec(engine="instant"), small, **gpu) == 1  # no model on the GPU
    assert resolve_engines_per_gpu(auto, small.model_copy(update={"tensor_parallel_size": 2}), **gpu) == 1
    assert resolve_engines_per_gpu(auto, ModelSpec(path="Qwen/Qwen3-0.6B"), **gpu) == 1  # a hub id: size unknown
    assert resolve_engines_per_gpu(RuntimeSpec(engines_per_gpu=3), ModelSpec(path="m")) == 3
    assert resolve_engines_per_gpu(RuntimeSpec(engines_per_gpu=1), small, **gpu) == 1
    # The layout a node gets by default: one GPU, a small model, MPS at hand -> two engines on it; no MPS -> one.
    assert engine_layout(auto, small, ["0"], mps=True) == EngineLayout(2, 1, (("0",), ("0",)), 2)
    assert engine_layout(auto, small, ["0"], mps=False) == EngineLayout(1, 1, (("0",),), 1)
    assert engine_layout(auto, small, [], mps=True) == EngineLayout(1, 1, ((),), 1)
    # MPS is at hand with the control program on PATH or a user's daemon, and never with mps: off.
    assert mps_available("auto", {}, which=lambda _: "/usr/bin/nvidia-cuda-mps-control")
    assert not mps_available("auto", {}, which=lambda _: None)
    assert mps_available("auto", {"CUDA_MPS_PIPE_DIRECTORY": "/tmp/mps"}, which=lambda _: None)
    assert not mps_available("off", {}, which=lambda _: "/usr/bin/nvidia-cuda-mps-control")
    # The size behind the rule: Qwen3-0.6B's published 0.6B (0.44B without embeddings), Llama-3.1-8B's 8.0B.
    assert ModelDims.from_config(QWEN_06B).params() == pytest.approx(0.596e9, rel=0.01)
    assert ModelDims.from_config(LLAMA_8B).params() == pytest.approx(8.03e9, rel=0.01)


def test_each_shared_engine_gets_its_share_of_memory(caplog):
    model = ModelSpec(path="m", gpu_memory_utilization=0.9, engine_kwargs={"kv_cache_memory_bytes": 3 * 2**30})
    assert share_overrides(model, 1) == []
    sets = share_overrides(model, 2)[1::2]
    assert sets == ["model.gpu_memory_utilization=0.45", "runtime.engines_per_gpu=2",
                    f"model.engine_kwargs.kv_cache_memory_bytes={3 * 2**29}"]
    assert share_overrides(ModelSpec(path="m", gpu_memory_utilization=0.9), 3)[1] == "model.gpu_memory_utilization=0.3"
    assert share_env({"VLLM_CPU_KVCACHE_SPACE": "4", "A": "b"}, 2) == {"VLLM_CPU_KVCACHE_SPACE": "2", "A": "b"}
    assert share_env({"VLLM_CPU_KVCACHE_SPACE": "1"}, 2)["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert "cannot be split" in caplog.text
    assert share_env({}, 2) == {}


def test_engines_sharing_a_gpu_start_together_with_explicit_kv_shares(tmp_path):
    """Each of k engines gets its share of the device as explicit KV bytes (vLLM then skips the memory profile
    that another engine starting beside it would upset), so they start together; where no size can be made
    explicit they start one by one."""
    (tmp_path / "small").mkdir()
    (tmp_path / "small" / "config.json").write_text(json.dumps(QWEN_06B))
    small = ModelSpec(path=str(tmp_path / "small"), gpu_memory_utilization=0.9)
    h200 = 143_771 * 2**20
    share = 0.9 * h200 / 2
    kv = shared_kv_bytes(small, 2, h200)
    weights = ModelDims.from_config(QWEN_06B).params() * 2
    assert kv == int(share - weights - 0.1 * share)  # the 10% margin is above 4 GiB on this share
    assert 50 * 2**30 < kv < 56 * 2**30
    assert shared_kv_bytes(small, 2, 16 * 2**30) == int(0.45 * 16 * 2**30 - weights - 4 * 2**30)  # 4 GiB at least
    assert shared_kv_bytes(small, 8, 16 * 2**30) is None  # 1.8 GiB shares hold no KV cache beside the margin
    assert shared_kv_bytes(small.model_copy(update={"dtype": "float32"}), 2, h200) == int(share - 2 * weights - 0.1 * share)
    assert shared_kv_bytes(ModelSpec(path="Qwen/Qwen3-0.6B"), 2, h200) is None  # a hub id: size unknown
    assert shared_kv_bytes(small, 2, None) is None  # no NVML

    auto = RuntimeSpec()
    plan = plan_shared_start(auto, small, 2, h200, on_gpu=True)
    assert plan.together and plan.kv_cache_memory_bytes == kv
    assert share_overrides(small, 2, plan.kv_cache_memory_bytes)[1::2][-1] == f"model.engine_kwargs.kv_cache_memory_bytes={kv}"
    no_nvml = plan_shared_start(auto, small, 2, None, on_gpu=True)
    assert not no_nvml.together and "NVML" in no_nvml.why
    assert plan_shared_start(RuntimeSpec(shared_start="together"), small, 2, None, on_gpu=True).together  # as asked
    assert not plan_shared_start(RuntimeSpec(shared_start="one_by_one"), small, 2, h200, on_gpu=True).together
    own = small.model_copy(update={"engine_kwargs": {"kv_cache_memory_bytes": 8 * 2**30}})
    assert plan_shared_start(auto, own, 2, None, on_gpu=True) == sharing.SharedStart(
        True, None, "engine_kwargs.kv_cache_memory_bytes sizes each KV cache")  # the job's own size, halved
    cpu = plan_shared_start(auto, small, 2, None, on_gpu=False)
    assert cpu.together and cpu.kv_cache_memory_bytes is None and "VLLM_CPU_KVCACHE_SPACE" in cpu.why


def test_start_gates_open_one_after_another():
    gates = StartGates(engines=4, per_group=2)  # e0, e1 on one GPU; e2, e3 on another
    try:
        assert "--start-file" not in gates.args(0) and "--start-file" not in gates.args(2)
        flags = dict(zip(gates.args(1)[::2], gates.args(1)[1::2]))
        go1, ready0 = Path(flags["--start-file"]), Path(dict(zip(gates.args(0)[::2], gates.args(0)[1::2]))["--ready-file"])
        gates.open_due(lambda i: False)
        assert not go1.exists()
        ready0.write_text("1")  # e0's engine is up: e1 may start; e3 still waits for e2
        gates.open_due(lambda i: False)
        assert go1.exists() and gates.opened == {0, 1, 2}
        gates.open_due(lambda i: i == 2)  # e2 exited (failed, or had nothing to do): e3 starts anyway
        assert gates.opened == {0, 1, 2, 3}
    finally:
        gates.close()
    assert StartGates(engines=2, per_group=1).args(1) == []


@pytest.mark.engine
def test_two_engines_share_one_device(tiny_model, tmp_path):
    """Two CPU engines split one device's memory budget and write every row once with the same greedy texts as
    one engine (float32: the engines batch rows differently, and bf16 rounding then flips near-tied greedy
    tokens now and then). They start together (on the CPU backend each KV cache has an explicit size), or one
    after the other with runtime.shared_start: one_by_one."""
    ids = write_shards(tmp_path / "in", shards=2, rows=60, row_group=10)

    def job(name: str) -> Path:
        # A small window and long answers: e0 must still be busy when e1's engine is up (seconds later).
        spec = job_dict(tiny_model, tmp_path / "in", tmp_path / name, input={"unit_rows": 10}, checkpoint={"every_rows": 10},
                        sampling={"max_tokens": 32}, runtime={"window": 4})
        spec["model"].update(dtype="float32", gpu_memory_utilization=0.1)
        return write_job(tmp_path / f"{name}.yaml", spec)

    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2"}
    cmd = [sys.executable, "-m", "batchgen", "run"]
    one = subprocess.run([*cmd, str(job("one"))], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stdout + one.stderr[-3000:]
    for name, start in (("two", "auto"), ("staged", "one_by_one")):
        two = subprocess.run([*cmd, str(job(name)), "--worker-id", "node", "--set", "runtime.engines_per_gpu=2",
                              "--set", f"runtime.shared_start={start}"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert two.returncode == 0, two.stdout + two.stderr[-3000:]
        assert texts_each_id_once(tmp_path / name, ids) == texts_each_id_once(tmp_path / "one", ids)

        meta = tmp_path / name / "_batchgen"
        e0, e1 = (json.loads((meta / f"summary-node-e{i}.json").read_text()) for i in (0, 1))
        assert e0["rows"] > 0 and e1["rows"] > 0 and e0["rows"] + e1["rows"] == len(ids)
        for e in (e0, e1):  # each engine has half the memory: 0.05 of the host, 1 GiB of KV cache
            assert e["engine_options"]["gpu_memory_utilization"] == pytest.approx(0.05)
            assert e["engine_options"]["kv_cache_memory_bytes"] == 2**30
            # ... which holds this many tokens (float32 KV; vLLM rounds down to whole blocks)
            per_token = read_dims(tiny_model).kv_bytes_per_token(4)
            assert 2**30 - per_token * e["engine_options"]["block_size"] < e["engine_options"]["kv_cache_tokens"] * per_token <= 2**30
        e1_began = e1["engine_ready_at"] - e1["engine_start_seconds"]
        node = json.loads((meta / "summary-node.json").read_text())
        assert node["rows"] == len(ids) and node["engine_options"]["engines_per_gpu"] == 2
        if start == "auto":  # e1 began starting its engine while e0's was still starting
            assert e1_began < e0["engine_ready_at"] - 1.0, (e0, e1)
            assert "2 engines per CPU device start together: CPU engines" in two.stderr
            assert node["engine_options"]["shared_start"] == "together"
        else:  # e1 began starting its engine only once e0's was ready
            assert e1_began >= e0["engine_ready_at"] - 0.05
            assert "e1: e0 is ready, e1 starts its engine" in two.stderr
            assert node["engine_options"]["shared_start"] == "one_by_one"


def test_timeline_keeps_about_a_point_a_second_and_the_last_result():
    from batchgen.run.timeline import Timeline

    t = Timeline(every=1.0, max_points=8)
    for i in range(100):  # 10 s of rows finishing every 0.1 s
        t.note(i + 1, now=1000.0 + i / 10)
    points = t.points()
    assert points[-1] == (1009.9, 100)  # the last result, not the last sampled second
    assert len(points) <= 9 and points[0] == (1000.0, 1)
    assert all(b[0] > a[0] and b[1] > a[1] for a, b in zip(points, points[1:]))
    assert Timeline().points() == []
