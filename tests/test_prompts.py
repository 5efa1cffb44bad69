"""Prompt sources on the real engine: chat messages and templates are rendered with the model's chat template."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchgen.job.load import validate
from batchgen.run.prompts import row_seed
from batchgen.run.runner import RunOptions, Runner
from batchgen.run.tokenizer import load_tokenizer
from tests.conftest import job_dict

pytestmark = pytest.mark.engine


def _run(engine, spec):
    Runner(spec, RunOptions(engine_factory=lambda _s: engine)).run()
    return {r["id"]: r for r in pq.read_table(spec.output.path + "/parts").to_pylist()}


def test_messages_and_template_render_the_same_chat(vllm_engine, tiny_model, tmp_path):
    topics = ["rivers", "bread", "winter"]
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({
        "id": [f"m{i}" for i in range(3)],
        "topic": topics,
        "messages": [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Tell me about {t}."}] for t in topics],
    }), tmp_path / "in" / "a.parquet")
    chat = _run(vllm_engine, validate(job_dict(tiny_model, tmp_path / "in", tmp_path / "o1",
                                               prompt={"column": None, "messages_column": "messages"})))
    tmpl = _run(vllm_engine, validate(job_dict(tiny_model, tmp_path / "in", tmp_path / "o2",
                                               prompt={"column": None, "template": "Tell me about {topic}.", "system": "Be brief."})))
    assert {k: v["text"] for k, v in chat.items()} == {k: v["text"] for k, v in tmpl.items()}
    # The prompt the engine saw is the chat template's rendering (one BOS, role markers), token for token.
    tok = load_tokenizer(validate(job_dict(tiny_model, "x", "y")).model)
    rendered = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about rivers."}],
                                       add_generation_prompt=True, tokenize=False)
    assert chat["m0"]["prompt_tokens"] == len(tok(rendered, add_special_tokens=False)["input_ids"])
    assert all(r["error"] is None and r["output_tokens"] > 0 for r in chat.values())


def test_seed_derives_from_job_seed_and_id(tiny_model, tmp_path):
    assert row_seed(1, "a") == row_seed(1, "a") != row_seed(2, "a") != row_seed(1, "b")
    assert 0 <= row_seed(0, "x") < 2**63
