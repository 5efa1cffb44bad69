"""LoRA adapters on the real CPU engine: a job's adapter gives vLLM's own LoRARequest outputs, per-row
adapters route each row to its adapter, a bad adapter name is an error row, a broken adapter fails the job
before any row is taken."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from batchgen.engine.base import Request
from batchgen.errors import EXIT_BAD_JOB, SpecError
from batchgen.job.load import validate
from batchgen.job.spec import ModelSpec, SamplingSpec
from batchgen.models.localize import adapter_rank, local_model, lora_rank
from batchgen.run.prompts import order_by_prefix
from batchgen.run.runner import RunOptions, Runner
from tests.conftest import SharedEngine, job_dict, run_cli, write_job, write_shards
from tests.direct import direct_texts
from tests.lora_adapters import write_adapter

ADAPTERS = {"a": 1, "b": 2}  # name -> weight seed


@pytest.fixture(scope="session")
def adapters(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("adapters")
    return {name: str(write_adapter(root / name, seed)) for name, seed in ADAPTERS.items()}


def lora_job(model, data, out, adapters: dict[str, str], **sections) -> dict:
    job = job_dict(model, data, out, **sections)
    job["model"]["lora"] = adapters
    return job


@pytest.fixture(scope="session")
def lora_engine(tiny_model, adapters, tmp_path_factory):
    """One more real engine, with LoRA enabled (vLLM's LoRA must be on at start). Session-scoped and never
    shut down: shutting down an in-process engine tears down vLLM's process-wide parallel state, which
    the session's other engines still use (the process exit frees it)."""
    from batchgen.engine.vllm import VllmEngine

    tmp = tmp_path_factory.mktemp("lora-engine")
    spec = validate(lora_job(tiny_model, tmp / "in", tmp / "out", adapters))
    return SharedEngine(VllmEngine(spec.model_copy(update={"model": local_model(spec.model, None)})))


def run(engine, spec):
    return Runner(spec, RunOptions(engine_factory=lambda _s: engine)).run()


def direct(engine, prompts: dict[str, str], lora: str | None) -> dict[str, str]:
    """Greedy outputs through vLLM's own API: prompt strings, LoRARequest(name, id, path) as users write it."""
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    loaded = engine.engine._loras.get(lora)
    req = None if lora is None else LoRARequest(lora, loaded.lora_int_id, loaded.lora_path)
    return direct_texts(engine.engine._engine, prompts, SamplingParams(temperature=0, max_tokens=8), req)


def outputs(out) -> dict[str, dict]:
    return {r["id"]: r for r in pq.read_table(out / "parts").to_pylist()}


@pytest.mark.engine
def test_job_adapter_equals_vllm_lora_request(lora_engine, tiny_model, adapters, tmp_path):
    write_shards(tmp_path / "in", shards=1, rows=10)
    prompts = {r["id"]: r["text"] for r in pq.read_table(tmp_path / "in").to_pylist()}
    spec = validate(lora_job(tiny_model, tmp_path / "in", tmp_path / "out", adapters, sampling={"lora": "a"}))
    summary = run(lora_engine, spec)
    assert summary.complete and summary.counters.errors == 0
    ours = {k: r["text"] for k, r in outputs(tmp_path / "out").items()}
    assert ours == direct(lora_engine, prompts, "a")
    base = direct(lora_engine, prompts, None)
    assert sum(ours[k] != base[k] for k in prompts) >= 8, "the adapter should change outputs"


@pytest.mark.engine
def test_per_row_adapters_route_each_row(lora_engine, tiny_model, adapters, tmp_path):
    names = ["a", "b", None, "a", "b", "zzz", None, "b"]
    write_shards(tmp_path / "in", shards=1, rows=24, adapter=lambda s, i: names[i % len(names)])
    prompts = {r["id"]: r["text"] for r in pq.read_table(tmp_path / "in").to_pylist()}
    want = {r["id"]: r["adapter"] for r in pq.read_table(tmp_path / "in").to_pylist()}
    spec = validate(lora_job(tiny_model, tmp_path / "in", tmp_path / "out", adapters,
                             sampling={"per_row": {"lora": "adapter"}}, runtime={"window": 5}))
    summary = run(lora_engine, spec)
    rows = outputs(tmp_path / "out")
    assert sorted(rows) == sorted(prompts)
    refs = {name: direct(lora_engine, prompts, name) for name in ("a", "b", None)}
    for rid, row in rows.items():
        if want[rid] == "zzz":
            assert row["text"] is None and "unknown LoRA adapter 'zzz' in column 'adapter'" in row["error"]
            assert "a, b" in row["error"]
        else:
            assert row["error"] is None and row["text"] == refs[want[rid]][rid], (rid, want[rid])
    assert summary.counters.errors == sum(v == "zzz" for v in want.values()) == 3


@pytest.mark.engine
def test_a_broken_adapter_fails_at_engine_start_naming_it(tiny_model, tmp_path):
    """Files of the right names and a weights file cut short (a failed upload): vLLM refuses it when it is
    loaded, which batchgen does for every adapter at engine start: exit 2 naming it, no row taken.
    (A process of its own: a failed engine is shut down, and in-process that would take the tests' engines along.)"""
    write_shards(tmp_path / "in", shards=1, rows=6)
    good = write_adapter(tmp_path / "good", 1)
    bad = write_adapter(tmp_path / "bad", 2)
    weights = bad / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:300])
    job = write_job(tmp_path / "job.yaml", lora_job(tiny_model, tmp_path / "in", tmp_path / "out",
                                                    {"good": str(good), "bad": str(bad)}))
    res = run_cli("run", str(job))
    assert res.returncode == EXIT_BAD_JOB, res.stderr[-2000:]
    assert "model.lora.bad: LoRA adapter 'bad' cannot be loaded from" in res.stderr and "header" in res.stderr
    assert not any((tmp_path / "out").rglob("*.parquet")), "no row may be generated"


def test_adapter_folders_are_checked_before_the_engine(tmp_path):
    fine = write_adapter(tmp_path / "fine", 1, rank=16)
    assert adapter_rank("fine", str(fine)) == 16
    (tmp_path / "empty").mkdir()
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    (tmp_path / "ia3").mkdir()
    (tmp_path / "ia3" / "adapter_config.json").write_text('{"peft_type": "IA3"}')
    for folder, message in [("missing", "folder not found"), ("empty", "no adapter_config.json"),
                            ("noweights", "no adapter weights"), ("ia3", "not LoRA")]:
        with pytest.raises(SpecError) as err:
            adapter_rank(folder, str(tmp_path / folder))
        assert message in err.value.message and err.value.where == f"model.lora.{folder}"
    # The rank vLLM reserves: the smallest of its values that fits every adapter, or the job's if it fits.
    assert lora_rank(None, {"x": 8, "y": 12}) == 16
    assert lora_rank(64, {"x": 8}) == 64
    with pytest.raises(SpecError, match="above model.max_lora_rank 8"):
        lora_rank(8, {"x": 8, "y": 16})
    with pytest.raises(SpecError, match="not a value vLLM takes"):
        lora_rank(12, {"x": 8})
    model = local_model(ModelSpec(path="/m", lora={"fine": str(fine)}), None)
    assert model.max_lora_rank == 16


@pytest.mark.parametrize("sampling, model_lora, message", [
    ({"lora": "c"}, {"a": "/x"}, "sampling.lora 'c' is not an adapter of model.lora (known: a)"),
    ({"per_row": {"lora": "col"}}, {}, "sampling.per_row.lora needs adapters"),
])
def test_adapter_names_are_checked_in_the_spec(tiny_model, tmp_path, sampling, model_lora, message):
    job = lora_job(tiny_model, tmp_path, tmp_path / "out", model_lora, sampling=sampling)
    with pytest.raises(SpecError, match="invalid job file") as err:
        validate(job)
    assert message in err.value.message


def test_rows_are_grouped_by_adapter_then_prefix():
    def req(i: int, lora: str | None, ids: list[int]) -> Request:
        return Request(unit="u", row_index=i, id=i, seed=0, sampling=SamplingSpec(), token_ids=ids, lora=lora)

    rows = [req(0, "b", [1, 2]), req(1, None, [5]), req(2, "a", [3]), req(3, "b", [1, 1]), req(4, None, [2]), req(5, "a", [1])]
    assert [(r.lora, r.token_ids) for r in order_by_prefix(rows)] == [
        (None, [2]), (None, [5]), ("a", [1]), ("a", [3]), ("b", [1, 1]), ("b", [1, 2])]


def test_adapter_is_part_of_the_fingerprint(tiny_model, tmp_path):
    job = lora_job(tiny_model, tmp_path, tmp_path / "out", {"a": "/x", "b": "/y"})
    base = validate(job).fingerprint()[0]
    assert validate({**job, "sampling": {"lora": "a"}}).fingerprint()[0] != base
    assert validate({**job, "sampling": {"lora": "b"}}).fingerprint()[0] != validate({**job, "sampling": {"lora": "a"}}).fingerprint()[0]
    assert validate({**job, "sampling": {"per_row": {"lora": "col"}}}).fingerprint()[0] != base
    moved = lora_job(tiny_model, tmp_path, tmp_path / "out", {"a": "/elsewhere", "b": "/y"})
    assert validate(moved).fingerprint()[0] != base  # another adapter folder under the same name
