"""Shared fixtures: the tiny model (built once, cached), Parquet shards, job files, one shared engine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from batchgen.models.tiny_llama import ensure_tiny_model
from tests.s3server import s3, s3_server  # noqa: F401 - the loopback S3 server fixtures

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The engine core in-process: starts in ~3 s instead of ~20 s. Tests of the default (multiprocess)
# mode set it back to 1 for their subprocess.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
# Worker locks and engine process records of the runs the tests start: in the checkout, not in ~/.cache.
os.environ.setdefault("BATCHGEN_STATE_DIR", str(ROOT / ".cache" / "state"))

# Words for prompts with shared prefixes (so the prefix cache has something to hit).
WORDS = "river mill garden bread rain sea road winter bee lantern stone field".split()
# Longer than one KV block (128 tokens on vLLM's CPU backend), so it can be served from the cache.
PREFIX = (
    "You label short texts about the countryside for a small archive of village records. Read the text, think about "
    "its main subject, and answer with one word from this list: river, mill, garden, bread, rain, sea, road, winter, "
    "bee, lantern, stone, field. If two words fit, choose the one that comes first in the list. Do not explain the "
    "answer, do not repeat the text, and do not add punctuation. The archive keeps the labels in a ledger, one line "
    "for each record, so a label must be a single lowercase word. Here is the text to label now: "
)


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return ensure_tiny_model(ROOT / ".cache" / "models")


def write_shards(folder: Path, shards: int = 2, rows: int = 40, row_group: int = 10, **extra_cols: Any) -> list[str]:
    """Parquet shards with id/text columns; ids are unique across shards."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for s in range(shards):
        n = range(rows)
        table = {
            "id": [f"s{s}-{i:05d}" for i in n],
            "text": [f"{PREFIX if i % 2 else ''}{WORDS[i % len(WORDS)]} and {WORDS[(i * 7 + s) % len(WORDS)]} number {i}" for i in n],
        }
        for name, fn in extra_cols.items():
            table[name] = [fn(s, i) for i in n]
        pq.write_table(pa.table(table), folder / f"shard-{s}.parquet", row_group_size=row_group)
        ids += table["id"]
    return ids


def job_dict(model: Path, data: Path | str, out: Path | str, **sections: dict) -> dict:
    job = {
        "name": "test",
        "input": {"path": str(data)},
        "prompt": {"column": "text"},
        "model": {"path": str(model), "max_model_len": 512, "enforce_eager": True, "gpu_memory_utilization": 0.05},
        "sampling": {"temperature": 0, "max_tokens": 8},
        "output": {"path": str(out)},
        "checkpoint": {"every_rows": 25},
        "runtime": {"progress": "lines", "progress_seconds": 1},
    }
    for key, value in sections.items():
        job.setdefault(key, {}).update(value)
    return job


def write_job(path: Path, job: dict) -> Path:
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def run_cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "batchgen", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


class SharedEngine:
    """One real vLLM engine for many in-process runs: `close` keeps it alive, aborting leftovers."""

    def __init__(self, engine):
        self.engine = engine
        self.info = engine.info

    @property
    def max_prompt_tokens(self):
        return self.engine.max_prompt_tokens

    def add(self, req):
        return self.engine.add(req)

    def step(self):
        return self.engine.step()

    def in_flight(self):
        return self.engine.in_flight()

    def abort_all(self):
        return self.engine.abort_all()

    def close(self):
        self.engine.abort_all()


@pytest.fixture(scope="session")
def vllm_engine(tiny_model, tmp_path_factory):
    """The real CPU vLLM engine on the tiny model, started once per test session (~25 s)."""
    from batchgen.engine.vllm import VllmEngine
    from batchgen.job.load import validate

    tmp = tmp_path_factory.mktemp("engine")
    spec = validate(job_dict(tiny_model, tmp / "in", tmp / "out"))
    engine = VllmEngine(spec)
    yield SharedEngine(engine)
    engine.close()


# Compact JSON (no free whitespace between tokens): a random-weight model given JSON's free whitespace
# fills it until max_tokens. A grammar setting of the engine, so JSON-schema tests get an engine of their own.
COMPACT_JSON = {"structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True}}


@pytest.fixture(scope="session")
def json_engine(tiny_model, tmp_path_factory):
    """A second real CPU engine on the tiny model, with model.engine_kwargs = COMPACT_JSON (started once)."""
    from batchgen.engine.vllm import VllmEngine
    from batchgen.job.load import validate

    tmp = tmp_path_factory.mktemp("json-engine")
    job = job_dict(tiny_model, tmp / "in", tmp / "out")
    job["model"]["engine_kwargs"] = COMPACT_JSON
    engine = VllmEngine(validate(job))
    yield SharedEngine(engine)
    engine.close()
