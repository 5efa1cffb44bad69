"""Structured outputs, logprobs and scores on the real CPU engine (the tiny model's random weights are fine:
a grammar constrains any model). Compared with vLLM's own API where there is something to compare."""

from __future__ import annotations

import json
import math
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from jsonschema import validate as validate_json

from batchgen.job.load import load_job, validate
from batchgen.run.runner import RunOptions, Runner
from tests.conftest import job_dict, write_job, write_shards

pytestmark = pytest.mark.engine

CHOICES = ["river", "mill", "garden", "bread"]
QA = {"type": "object", "additionalProperties": False, "required": ["question", "answer", "score"],
      "properties": {"question": {"type": "string", "maxLength": 20}, "answer": {"type": "string", "enum": ["yes", "no"]},
                     "score": {"type": "integer", "minimum": 0, "maximum": 9}}}


def run(engine, spec):
    return Runner(spec, RunOptions(engine_factory=lambda _s: engine)).run()


def rows_of(out):
    return sorted(pq.read_table(out / "parts").to_pylist(), key=lambda r: r["id"])


def direct(engine, prompts: dict, params) -> dict:
    """vLLM's own LLMEngine (the engine batchgen drives): request id -> finished RequestOutput."""
    llm = engine.engine._engine
    for key, prompt in prompts.items():
        llm.add_request(key, prompt, params)
    done = {}
    while llm.has_unfinished_requests():
        done.update({o.request_id: o for o in llm.step() if o.finished})
    return done


def test_choice_labels_and_scores_match_vllm(vllm_engine, tiny_model, tmp_path):
    from transformers import AutoTokenizer
    from vllm import SamplingParams

    write_shards(tmp_path / "in", shards=1, rows=16)
    spec = validate(job_dict(tiny_model, tmp_path / "in", tmp_path / "out", sampling={
        "temperature": 0, "max_tokens": 16, "structured": {"choice": CHOICES}, "choice_scores": True}))
    assert run(vllm_engine, spec).counters.errors == 0
    rows = rows_of(tmp_path / "out")
    for r in rows:
        assert r["error"] is None and r["label"] == r["text"] and r["label"] in CHOICES
        scores = dict(r["label_scores"])
        assert list(scores) == CHOICES and all(0 <= p <= 1 for p in scores.values())
        assert math.fsum(scores.values()) == pytest.approx(1.0, abs=1e-9)
    assert len({r["label"] for r in rows}) > 1, "labels should depend on the prompt"

    # The same scores from vLLM without any grammar: the unconstrained logprobs of every token that begins a
    # choice (found here by decoding the vocabulary), split among the choices it begins, normalized.
    tok = AutoTokenizer.from_pretrained(tiny_model)
    begins = {i: [c for c in CHOICES if c.startswith(t)] for i in range(len(tok))
              if (t := tok.decode([i])) and i not in tok.all_special_ids}
    begins = {i: cs for i, cs in begins.items() if cs}
    texts = {r["id"]: r["text"] for r in pq.read_table(tmp_path / "in").to_pylist()}
    outs = direct(vllm_engine, texts, SamplingParams(temperature=0, max_tokens=1, logprob_token_ids=sorted(begins)))
    for r in rows:
        first = outs[r["id"]].outputs[0].logprobs[0]
        mass = dict.fromkeys(CHOICES, 0.0)
        for i, cs in begins.items():
            for c in cs:
                mass[c] += math.exp(first[i].logprob) / len(cs)
        expected = {c: m / sum(mass.values()) for c, m in mass.items()}
        assert dict(r["label_scores"]) == pytest.approx(expected, abs=2e-3), r["id"]


def test_regex_every_text_matches(vllm_engine, tiny_model, tmp_path):
    write_shards(tmp_path / "in", shards=1, rows=12)
    pattern = r"(yes|no), [0-9]{1,3}"
    spec = validate(job_dict(tiny_model, tmp_path / "in", tmp_path / "out",
                             sampling={"temperature": 0.8, "max_tokens": 16, "structured": {"regex": pattern}}))
    run(vllm_engine, spec)
    rows = rows_of(tmp_path / "out")
    assert len(rows) == 12 and all(re.fullmatch(pattern, r["text"]) for r in rows), [r["text"] for r in rows]
    assert "label" not in rows[0] and "parsed" not in rows[0]  # no column a job did not ask for


def test_label_cut_by_max_tokens_keeps_its_text(vllm_engine, tiny_model, tmp_path):
    write_shards(tmp_path / "in", shards=1, rows=4)
    spec = validate(job_dict(tiny_model, tmp_path / "in", tmp_path / "out",
                             sampling={"temperature": 0, "max_tokens": 1, "structured": {"choice": ["river", "garden"]}}))
    summary = run(vllm_engine, spec)
    assert summary.counters.errors == 4 and summary.counters.invalid_json == 0  # not JSON: counted as errors only
    for r in rows_of(tmp_path / "out"):
        assert r["label"] is None and r["finish_reason"] == "length" and r["text"] and any(c.startswith(r["text"]) for c in ("river", "garden"))
        assert r["error"] == "the completion is not one of the choices: cut by max_tokens (raise sampling.max_tokens)"


def test_json_schema_file_every_parsed_validates(json_engine, tiny_model, tmp_path):
    write_shards(tmp_path / "in", shards=2, rows=10)
    (tmp_path / "qa.schema.json").write_text(json.dumps(QA))
    job = job_dict(tiny_model, tmp_path / "in", tmp_path / "out",
                   sampling={"temperature": 0.7, "max_tokens": 64, "structured": {"json_schema": "./qa.schema.json"}})
    spec = load_job(write_job(tmp_path / "job.yaml", job))  # the schema path is relative to the job file
    summary = run(json_engine, spec)
    assert summary.complete and summary.counters.errors == 0 and summary.counters.invalid_json == 0
    rows = rows_of(tmp_path / "out")
    assert len(rows) == 20
    for r in rows:
        assert r["error"] is None and r["finish_reason"] == "stop"
        validate_json(json.loads(r["parsed"]), QA)
        assert json.loads(r["parsed"]) == json.loads(r["text"])
    # The schema's content, not its path, shapes the output: it is what the manifest records.
    manifest = json.loads((tmp_path / "out" / "_batchgen" / "job.json").read_text())
    assert manifest["jobs"][0]["fields"]["sampling"]["structured"]["json_schema"] == QA


SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}}, "required": ["name"], "additionalProperties": False},
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99}, "minItems": 1, "maxItems": 3},
    {"type": "string", "enum": ["yes", "no"]},
]


def test_per_row_schemas_each_row_validates_against_its_own(json_engine, tiny_model, tmp_path):
    # 7: not JSON; 8: not JSON Schema; 9: valid JSON Schema that vLLM's grammar backends cannot compile (refused
    # at add_request: VLLMValidationError in vLLM 0.32, which is not a ValueError).
    bad = {7: "{not json", 8: json.dumps({"type": "bogus"}), 9: json.dumps({"type": "integer", "minimum": 5, "maximum": 1})}
    ids = write_shards(tmp_path / "in", shards=1, rows=12,
                       schema=lambda s, i: bad.get(i, json.dumps(SCHEMAS[i % 3]) if i != 11 else None))
    spec = validate(job_dict(tiny_model, tmp_path / "in", tmp_path / "out",
                             sampling={"temperature": 0.7, "max_tokens": 48, "per_row": {"structured_schema": "schema"}}))
    summary = run(json_engine, spec)
    assert summary.complete and summary.counters.rows == 12 and summary.counters.errors == 3
    rows = {r["id"]: r for r in rows_of(tmp_path / "out")}
    assert "not valid JSON" in rows[ids[7]]["error"] and "not a valid JSON Schema" in rows[ids[8]]["error"]
    assert rows[ids[9]]["error"].startswith("rejected by vLLM") and rows[ids[9]]["text"] is None
    for i in (7, 8):
        assert rows[ids[i]]["error"].startswith("invalid per-row value in column 'schema'") and repr(ids[i]) in rows[ids[i]]["error"]
    assert rows[ids[11]]["error"] is None and rows[ids[11]]["parsed"] is None  # null cell: the job's (free) text
    for i in set(range(11)) - set(bad):
        r = rows[ids[i]]
        assert r["error"] is None, r
        value = json.loads(r["parsed"])
        validate_json(value, SCHEMAS[i % 3])
        for other in set(range(3)) - {i % 3}:  # the schemas exclude each other: each row followed its own
            with pytest.raises(Exception):
                validate_json(value, SCHEMAS[other])


def test_per_row_choices(vllm_engine, tiny_model, tmp_path):
    lists = [["yes", "no"], ["red", "green", "blue"], CHOICES]
    write_shards(tmp_path / "in", shards=1, rows=9, labels=lambda s, i: lists[i % 3])
    spec = validate(job_dict(tiny_model, tmp_path / "in", tmp_path / "out", sampling={
        "temperature": 0.9, "max_tokens": 12, "per_row": {"choices": "labels"}, "choice_scores": True}))
    run(vllm_engine, spec)
    for k, r in enumerate(rows_of(tmp_path / "out")):
        assert r["error"] is None and r["label"] in lists[k % 3]
        assert [c for c, _ in r["label_scores"]] == lists[k % 3]
        assert math.fsum(p for _, p in r["label_scores"]) == pytest.approx(1.0)


def test_schema_cut_by_max_tokens_is_an_error_row_and_the_job_goes_on(json_engine, tiny_model, tmp_path):
    write_shards(tmp_path / "in", shards=1, rows=8)
    spec = validate(job_dict(tiny_model, tmp_path / "in", tmp_path / "out",
                             sampling={"temperature": 0, "max_tokens": 3, "structured": {"json_schema": QA}}))
    summary = run(json_engine, spec)
    assert summary.complete and summary.counters.rows == 8
    assert summary.counters.errors == summary.counters.invalid_json == 8
    assert "(8 invalid JSON)" in summary.lines()[1]
    stats = pa.concat_tables(pq.read_table(p) for p in (tmp_path / "out" / "stats").glob("*.parquet"))
    assert sum(stats.column("invalid_json").to_pylist()) == 8
    for r in rows_of(tmp_path / "out"):
        assert r["error"] == "invalid JSON: cut by max_tokens before the JSON ended (raise sampling.max_tokens)"
        assert r["text"].startswith("{") and r["finish_reason"] == "length" and r["parsed"] is None
    # Committed like any row: a rerun regenerates nothing.
    assert run(json_engine, spec).counters.rows == 0


def test_logprobs_columns_shaped_as_documented(vllm_engine, tiny_model, tmp_path):
    write_shards(tmp_path / "in", shards=1, rows=6)
    spec = validate(job_dict(tiny_model, tmp_path / "in", tmp_path / "out", sampling={
        "temperature": 0.8, "max_tokens": 6, "n": 2, "logprobs": 3, "prompt_logprobs": 2}))
    run(vllm_engine, spec)
    for r in rows_of(tmp_path / "out"):
        assert r["logprobs"] == r["completions"][0]["logprobs"]
        assert r["cumulative_logprob"] == r["completions"][0]["cumulative_logprob"]
        for c in r["completions"]:
            assert len(c["logprobs"]) == c["output_tokens"]
            assert c["cumulative_logprob"] == pytest.approx(sum(t["logprob"] for t in c["logprobs"]), abs=1e-4)
            for t in c["logprobs"]:
                top = t["top_logprobs"]
                assert len(top) == 3 and [a["logprob"] for a in top] == sorted((a["logprob"] for a in top), reverse=True)
                assert t["rank"] >= 1 and t["logprob"] <= 0
                if t["rank"] <= 3:  # the chosen token is among the top 3, at its rank
                    assert top[t["rank"] - 1]["token_id"] == t["token_id"]
                    assert top[t["rank"] - 1]["logprob"] == t["logprob"]
            assert "".join(t["token"] for t in c["logprobs"]).removesuffix("</s>") == c["text"]  # EOS counts as a token
        prompt = r["prompt_logprobs"]
        assert len(prompt) == r["prompt_tokens"] and prompt[0]["logprob"] is None
        assert all(len(p["top_logprobs"]) == 2 and p["logprob"] <= 0 for p in prompt[1:])


def test_scoring_equals_vllm_prompt_logprobs(vllm_engine, tiny_model, tmp_path):
    from transformers import AutoTokenizer
    from vllm import SamplingParams
    from vllm.inputs import tokens_input

    write_shards(tmp_path / "in", shards=1, rows=10, answer=lambda s, i: f" the {['river', 'mill'][i % 2]} number {i}")
    tok = AutoTokenizer.from_pretrained(tiny_model)
    table = {r["id"]: r for r in pq.read_table(tmp_path / "in").to_pylist()}
    params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0)
    for name, prompt in (("alone", {"score_column": "text"}), ("context", {"template": "Label: {text}", "score_column": "answer"})):
        job = job_dict(tiny_model, tmp_path / "in", tmp_path / name)
        job["prompt"] = prompt
        summary = run(vllm_engine, validate(job))
        assert summary.counters.errors == 0 and summary.counters.cached_tokens == 0  # prompt logprobs read no cache
        if name == "alone":  # the whole text is scored: vLLM tokenizes the string itself
            prompts, starts = {k: r["text"] for k, r in table.items()}, dict.fromkeys(table, 1)
        else:
            ctx = {k: tok(f"Label: {r['text']}")["input_ids"] for k, r in table.items()}
            prompts = {k: tokens_input(ctx[k] + tok(r["answer"], add_special_tokens=False)["input_ids"]) for k, r in table.items()}
            starts = {k: len(ids) for k, ids in ctx.items()}
        outs = direct(vllm_engine, prompts, params)
        for r in rows_of(tmp_path / name):
            o = outs[r["id"]]
            own = [o.prompt_logprobs[p][t].logprob for p, t in enumerate(o.prompt_token_ids) if p >= starts[r["id"]]]
            assert r["score_tokens"] == len(own) == r["prompt_tokens"] - starts[r["id"]]
            assert r["logprob_sum"] == pytest.approx(math.fsum(own), rel=1e-3, abs=1e-3)
            assert r["logprob_mean"] == pytest.approx(r["logprob_sum"] / r["score_tokens"])
            assert r["perplexity"] == pytest.approx(math.exp(-r["logprob_mean"]))
            assert r["output_tokens"] == 1
