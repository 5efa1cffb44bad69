"""Bad structured-output and logprobs settings fail before the engine starts (exit 2), naming the key.

The job loads (typed spec: two kinds, a schema that is not JSON Schema), or the run's preparation reads
the schema file and has vLLM's own check compile the constraint: either way no engine is started.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from batchgen.cli import app
from batchgen.errors import EXIT_BAD_JOB, BatchgenError
from batchgen.io.openai_structured import request_options
from batchgen.io.parts import output_schema
from batchgen.job.load import load_job, validate
from batchgen.run.runner import RunOptions, Runner
from tests.conftest import job_dict, write_job, write_shards


def _no_engine(_spec):
    raise AssertionError("the engine was started for a job that should have failed before")


def _job(tiny_model, tmp_path, sampling=None, prompt=None, model=None) -> dict:
    job = job_dict(tiny_model, tmp_path / "in", tmp_path / "out", sampling={"temperature": 0, **(sampling or {})})
    job["prompt"].update(prompt or {})
    job["model"].update(model or {})
    return job


CASES = [  # (case id, sampling, prompt, model, expected text)
    ("two-kinds", {"structured": {"choice": ["a", "b"], "regex": "[a-z]+"}}, None, None,
     "sampling.structured: set exactly one of choice, regex, json_schema, grammar or json_object (got choice, regex)"),
    ("no-kind", {"structured": {}}, None, None, "sampling.structured: set exactly one of choice"),
    ("not-json-schema", {"structured": {"json_schema": {"type": "bogus"}}}, None, None,
     "sampling.structured.json_schema: not a valid JSON Schema (Draft202012): 'bogus' is not valid under any of the given schemas at $.type"),
    ("empty-choice", {"structured": {"choice": []}}, None, None, "sampling.structured.choice"),
    ("repeated-choice", {"structured": {"choice": ["a", "a"]}}, None, None, "choices repeat: ['a']"),
    ("json-object-false", {"structured": {"json_object": False}}, None, None, "json_object takes only `true`"),
    ("scores-without-choice", {"choice_scores": True}, None, None, "sampling.choice_scores scores the labels of a choice"),
    ("scores-and-logprobs", {"structured": {"choice": ["a", "b"]}, "choice_scores": True, "logprobs": 2}, None, None,
     "sampling.choice_scores and sampling.logprobs cannot be combined"),
    ("negative-logprobs", {"logprobs": -1}, None, None, "sampling.logprobs: Input should be greater than or equal to 0"),
    ("score-and-structured", {"structured": {"regex": "a"}}, {"score_column": "text"}, None,
     "prompt.score_column scores existing text and generates nothing"),
    ("score-alone-with-system", None, {"column": None, "score_column": "text", "system": "x"}, None,
     "prompt.score_column alone scores plain text"),
    # Past the spec: vLLM's own check (xgrammar, then its fallbacks) at prepare time.
    ("regex-does-not-compile", {"structured": {"regex": "(unclosed"}}, None, None,
     "sampling.structured.regex: vLLM (auto backend) cannot use this constraint"),
    ("schema-vllm-cannot-satisfy", {"structured": {"json_schema": {"type": "integer", "minimum": 5, "maximum": 1}}}, None, None,
     "sampling.structured.json_schema: vLLM (auto backend) cannot use this constraint"),
    ("grammar-does-not-compile", {"structured": {"grammar": "root ::= missing_rule"}}, None, None,
     "sampling.structured.grammar: vLLM (auto backend) cannot use this constraint"),
    ("bad-backend-config", {"structured": {"regex": "a"}}, None,
     {"engine_kwargs": {"structured_outputs_config": {"backend": "outlines", "disable_any_whitespace": True}}},
     "model.engine_kwargs.structured_outputs_config: invalid structured outputs config: disable_any_whitespace is only supported"),
    ("logprobs-over-max", {"logprobs": 5}, None, {"engine_kwargs": {"max_logprobs": 3}},
     "sampling.logprobs: sampling asks for 5 logprobs; model.engine_kwargs.max_logprobs is 3"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_settings_fail_before_the_engine(tiny_model, tmp_path, case):
    _, sampling, prompt, model, expected = case
    write_shards(tmp_path / "in", shards=1, rows=3)
    with pytest.raises(BatchgenError) as err:
        Runner(validate(_job(tiny_model, tmp_path, sampling, prompt, model)), RunOptions(engine_factory=_no_engine)).run()
    assert err.value.exit_code == EXIT_BAD_JOB
    assert expected in str(err.value), str(err.value)
    assert not (tmp_path / "out" / "parts").exists()


SCHEMA_FILES = [  # (file content, expected text)
    ("{not json", "is not valid JSON: Expecting property name"),
    (json.dumps({"type": "object", "properties": {"a": {"type": 7}}}), "not a valid JSON Schema"),
    (None, "file not found"),
]


@pytest.mark.parametrize("content, expected", SCHEMA_FILES, ids=["not-json", "not-a-schema", "missing"])
def test_bad_schema_file_exit_2_naming_key_and_file(tiny_model, tmp_path, content, expected):
    write_shards(tmp_path / "in", shards=1, rows=3)
    schema = tmp_path / "schema.json"
    if content is not None:
        schema.write_text(content)
    path = write_job(tmp_path / "job.yaml", _job(tiny_model, tmp_path, {"structured": {"json_schema": "./schema.json"}}))
    res = CliRunner().invoke(app, ["run", str(path)])
    assert res.exit_code == 2, res.output
    assert "sampling.structured.json_schema" in res.output and expected in res.output and str(schema) in res.output
    assert "fix:" in res.output and not (tmp_path / "out" / "parts").exists()


def test_validate_reports_the_same_problems(tiny_model, tmp_path):
    write_shards(tmp_path / "in", shards=1, rows=3)
    path = write_job(tmp_path / "job.yaml", _job(tiny_model, tmp_path, {"structured": {"regex": "(unclosed"}}))
    res = CliRunner().invoke(app, ["validate", str(path)])
    assert res.exit_code == 2 and "cannot use this constraint" in res.output, res.output


def test_no_new_columns_unless_asked(tiny_model, tmp_path):
    import pyarrow as pa

    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("labels", pa.list_(pa.string()))])
    plain = output_schema(validate(_job(tiny_model, tmp_path)), schema).names
    assert plain == ["id", "text", "finish_reason", "prompt_tokens", "output_tokens", "cached_tokens", "seed", "error", "row_index"]
    asked = output_schema(validate(_job(tiny_model, tmp_path, {"per_row": {"choices": "labels"}, "choice_scores": True,
                                                                "prompt_logprobs": 1})), schema).names
    assert {"label", "label_scores", "prompt_logprobs"} <= set(asked) and "parsed" not in asked and "logprobs" not in asked


def test_shipped_jobs_use_structured_outputs():
    from tests.conftest import ROOT

    label = load_job(ROOT / "jobs" / "label.yaml").sampling
    assert label.structured.choice and label.choice_scores
    synth = load_job(ROOT / "jobs" / "synth.yaml").sampling
    assert synth.structured.schema_file and synth.structured.schema_file.endswith(".json")


@pytest.mark.parametrize("body, expected, error", [
    ({"response_format": {"type": "json_object"}}, {"json_object": True}, None),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer"}, "strict": True}}},
     {"structured_schema": '{"type": "integer"}'}, None),
    ({"response_format": {"type": "text"}, "logprobs": True}, {"logprobs": 0}, None),
    ({"logprobs": True, "top_logprobs": 5}, {"logprobs": 5}, None),
    ({"logprobs": False}, {"logprobs": None}, None),
    ({"top_logprobs": 2}, {}, "body.top_logprobs needs body.logprobs: true"),
    ({"logprobs": True, "top_logprobs": 21}, {}, "body.top_logprobs must be an integer from 0 to 20"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, {}, "json_schema.schema must be a JSON schema object"),
    ({"response_format": {"type": "xml"}}, {}, "body.response_format.type must be text, json_object or json_schema"),
])
def test_openai_request_options(body, expected, error):
    row, err = request_options(body)
    assert err == error if error is None else error in err
    for k, v in expected.items():
        assert row[k] == v


def test_choice_token_table_is_built_before_the_first_request(tiny_model):
    """A job that scores choices gets its vocabulary table when the engine starts (RequestExtras.prepare,
    called by VLLMEngine's start), not inside the first engine step; other jobs never pay for it."""
    from transformers import AutoTokenizer

    from batchgen.engine.params import RequestExtras
    from batchgen.job.spec import SamplingSpec

    tok = AutoTokenizer.from_pretrained(tiny_model)
    asked = []
    extras = RequestExtras(lambda: asked.append(1) or tok, len(tok))
    extras.prepare(SamplingSpec(temperature=0, structured={"choice": ["a", "b"]}))
    extras.prepare(SamplingSpec(temperature=0, logprobs=2))
    assert asked == []  # no choice scores: no table
    extras.prepare(SamplingSpec(temperature=0, structured={"choice": ["river", "mill"]}, choice_scores=True))
    assert asked == [1]
    ids = extras.kwargs(SamplingSpec(temperature=0, structured={"choice": ["river", "mill"]}, choice_scores=True))["logprob_token_ids"]
    assert asked == [1] and ids and all(tok.decode([i]) and ("river".startswith(tok.decode([i])) or "mill".startswith(tok.decode([i]))) for i in ids)
