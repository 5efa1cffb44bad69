"""Image prompts on a GPU with llava-1.5-7b's shape (dummy weights): every row generated, broken images are
error rows naming their row, each image is 576 prompt tokens. The CPU part checks the model folder itself."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from batchgen.models.tiny_llava import IMAGE_TOKEN, LLAVA_15_7B, build_llava


def test_llava_7b_folder_has_the_real_shape(tmp_path):
    """What the GPU run loads: llava-1.5-7b's config, a tokenizer of its vocabulary with <image> at 32000."""
    from transformers import AutoProcessor

    folder = build_llava(tmp_path / "llava", LLAVA_15_7B, seed=None)
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"] and config["image_token_index"] == 32000
    assert config["text_config"]["vocab_size"] == 32064 and config["text_config"]["num_hidden_layers"] == 32
    assert config["vision_config"]["image_size"] == 336 and config["vision_config"]["patch_size"] == 14
    assert not (folder / "model.safetensors").exists()  # load_format: dummy
    processor = AutoProcessor.from_pretrained(folder)
    assert processor.tokenizer(f"{IMAGE_TOKEN}\nhi")["input_ids"][0] == 32000
    assert json.loads((folder / "processor_config.json").read_text())["image_token"] == IMAGE_TOKEN
    assert LLAVA_15_7B.image_tokens == 576


@pytest.mark.gpu
def test_image_job_on_llava_7b_shape(tmp_path):
    from benchmarks.images import build, run_batchgen

    model, data, ids = build(tmp_path, rows=96)
    result = run_batchgen(model, data, tmp_path / "out", max_tokens=16)
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "parts").to_pylist()}
    assert sorted(rows) == sorted(ids) and result["errors"] == 3
    broken = sorted(k for k, r in rows.items() if r["error"])
    assert broken == ["img-000007", "img-000039", "img-000071"]
    assert all(f"row {k!r}: image 1 of 1 is unreadable" in rows[k]["error"] for k in broken)
    assert all(r["output_tokens"] == 16 and r["prompt_tokens"] > 576 for k, r in rows.items() if k not in broken)
