"""OpenAI Batch API files: requests JSONL in, Parquet and response JSONL out, keyed by the same custom_ids."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from batchgen.io.openai_batch import parse_request
from batchgen.job.load import validate
from tests.outputs import planned_units
from batchgen.run.runner import RunOptions, Runner
from tests.conftest import job_dict

LABELS = "river mill garden bread rain sea".split()


def request(i: int, **body) -> dict:
    return {"custom_id": f"task-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "Label the text with one word."},
                                                          {"role": "user", "content": f"A short note about the {LABELS[i % 6]}, number {i}."}],
                     **body}}


def write_requests(path: Path, reqs: list, extra_lines: list[str] = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in reqs) + "".join(line + "\n" for line in extra_lines))
    return path


def openai_job(model: Path, requests: Path, out: Path) -> dict:
    job = job_dict(model, requests, out, output={"openai_batch_jsonl": True}, checkpoint={"every_rows": 4})
    job["input"]["format"] = "openai_batch"
    del job["prompt"]  # an OpenAI batch file brings its prompts (messages) and per-row sampling (body)
    return job


def read_responses(out: Path) -> dict:
    lines = [json.loads(line) for f in sorted((out / "openai").glob("*.jsonl")) for line in f.read_text().splitlines()]
    by_id = {line["custom_id"]: line for line in lines}
    assert len(by_id) == len(lines), "each custom_id once"
    return by_id


def test_round_trip_keyed_by_custom_id(vllm_engine, tiny_model, tmp_path):
    reqs = [request(i, max_tokens=2 + i % 5, temperature=0) for i in range(14)]
    reqs[3]["body"]["stop"] = "\n"
    reqs[4]["body"] = {**reqs[4]["body"], "max_completion_tokens": 3, "n": 2, "temperature": 0.8, "seed": 11}
    del reqs[4]["body"]["max_tokens"]
    bad = [{"custom_id": "emb-1", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}}]
    src = write_requests(tmp_path / "batch" / "requests.jsonl", reqs + bad, ["", "{not json"])
    spec = validate(openai_job(tiny_model, src, tmp_path / "out"))

    units = planned_units(spec)
    assert [(u.key, u.rows) for u in units] == [("requests@0", 16)]  # blank lines are not requests
    summary = Runner(spec, RunOptions(engine_factory=lambda _s: vllm_engine)).run()
    assert summary.complete and summary.counters.rows == 16 and summary.counters.errors == 2

    got = read_responses(tmp_path / "out")
    assert set(got) == {r["custom_id"] for r in reqs} | {"emb-1", None}
    parts = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "parts").to_pylist()}
    for r in reqs:
        line = got[r["custom_id"]]
        assert line["error"] is None and line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == "tiny-llama-v1-s0"
        limit = r["body"].get("max_tokens") or r["body"]["max_completion_tokens"]
        n = r["body"].get("n", 1)
        assert len(body["choices"]) == n
        for c in body["choices"]:
            assert c["message"]["role"] == "assistant" and c["finish_reason"] in ("stop", "length")
        usage = body["usage"]
        assert usage["completion_tokens"] <= limit * n  # the body's max_tokens was applied per row
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert body["choices"][0]["message"]["content"] == parts[r["custom_id"]]["text"]
    assert got["emb-1"]["error"]["message"].startswith("bad request: only /v1/chat/completions requests are supported")
    assert got["emb-1"]["response"]["status_code"] == 400
    assert got[None]["error"]["message"].startswith("bad request: not valid JSON")
    # Rows ran to their own limit (2..6), not the job's 8: the body's max_tokens applied per row.
    assert sum(got[r["custom_id"]]["response"]["body"]["usage"]["completion_tokens"] == r["body"].get("max_tokens")
               for r in reqs) >= 8


def test_missing_output_file_is_rebuilt_on_rerun(vllm_engine, tiny_model, tmp_path):
    """A kill between a part's commit and its JSONL leaves the JSONL missing: the next run writes it."""
    src = write_requests(tmp_path / "requests.jsonl", [request(i, max_tokens=3) for i in range(9)])
    job = openai_job(tiny_model, src, tmp_path / "out")
    job["runtime"]["window"] = 2  # rows finish two by two: several parts
    spec = validate(job)
    Runner(spec, RunOptions(engine_factory=lambda _s: vllm_engine)).run()
    files = sorted((tmp_path / "out" / "openai").glob("*.jsonl"))
    assert len(files) == len(list((tmp_path / "out" / "parts").glob("*.parquet"))) >= 2
    before = {json.loads(x)["custom_id"]: json.loads(x)["response"]["body"]["choices"] for x in files[1].read_text().splitlines()}
    files[1].unlink()
    summary = Runner(spec, RunOptions(engine_factory=lambda _s: vllm_engine)).run()
    assert summary.counters.rows == 0 and summary.complete  # nothing regenerated...
    after = read_responses(tmp_path / "out")  # ...but the JSONL is back, with the same content
    assert len(after) == 9
    assert {k: after[k]["response"]["body"]["choices"] for k in before} == before


@pytest.mark.parametrize("line, expect_error, check", [
    ({"custom_id": 7, "body": {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 5, "stop": "x"}},
     None, lambda r: r["id"] == "7" and r["max_tokens"] == 5 and r["stop"] == ["x"]),
    ({"custom_id": "a", "body": {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}},
     None, lambda r: r["messages"] == [{"role": "user", "content": "ab", "images": None}]),
    ({"custom_id": "a", "body": {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is it?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "image_url", "image_url": "s3://b/cat.jpg"}]}]}},
     None, lambda r: r["messages"] == [{"role": "user", "content": "what is it?", "images": ["data:image/png;base64,AAAA", "s3://b/cat.jpg"]}]),
    ({"custom_id": "a", "body": {"messages": [{"role": "user", "content": "hi"}], "temperature": True}},
     "body.temperature must be a number, got True", None),
    ({"custom_id": "a", "body": {"messages": [{"role": "user", "content": "hi"}], "n": 1.5}}, "body.n must be an integer", None),
    ({"custom_id": "a", "body": {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}},
     "body.tools is not supported by batchgen", None),
    ({"custom_id": "a", "body": {"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"},
                                 "logprobs": True, "top_logprobs": 2}},
     None, lambda r: r["json_object"] is True and r["logprobs"] == 2 and r["structured_schema"] is None),
    ({"custom_id": "a", "body": {"messages": []}}, "body.messages must be a non-empty list", None),
    ({"custom_id": "a", "method": "GET", "body": {}}, "method must be POST", None),
    ({"custom_id": "a", "body": {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}}, "image_url part without a url", None),
    ({"custom_id": "a", "body": {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}},
     "only text and image_url are supported", None),
])
def test_parse_request_table(line, expect_error, check):
    row, error = parse_request(json.dumps(line), "id")
    if expect_error is None:
        assert error is None and check(row)
    else:
        assert error is not None and expect_error in error
        assert row["id"] == "a"  # still keyed by its custom_id: the error row answers this request


QA = {"type": "object", "properties": {"q": {"type": "string", "maxLength": 12}, "ok": {"type": "boolean"}},
      "required": ["q", "ok"], "additionalProperties": False}


def test_response_format_and_logprobs_round_trip(json_engine, tiny_model, tmp_path):
    """response_format and logprobs/top_logprobs are served (not error rows), and the JSONL carries them in
    OpenAI's shapes: message.content holds the JSON, choices[i].logprobs.content the tokens."""
    schema_format = {"type": "json_schema", "json_schema": {"name": "qa", "schema": QA, "strict": True}}
    reqs = [request(0, max_tokens=40, response_format=schema_format, logprobs=True, top_logprobs=2),
            request(1, max_tokens=40, response_format={"type": "json_object"}, n=2, temperature=0.9, seed=3, logprobs=True),
            request(2, max_tokens=6, logprobs=False),
            request(3, max_tokens=2, response_format=schema_format)]  # cut by max_tokens: OpenAI answers 200 all the same
    src = write_requests(tmp_path / "requests.jsonl", reqs)
    spec = validate(openai_job(tiny_model, src, tmp_path / "out"))
    summary = Runner(spec, RunOptions(engine_factory=lambda _s: json_engine)).run()
    assert summary.counters.rows == 4 and summary.counters.invalid_json == summary.counters.errors == 1
    got = read_responses(tmp_path / "out")
    parts = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "parts").to_pylist()}

    first = got["task-0"]["response"]["body"]["choices"][0]
    from jsonschema import validate as validate_json

    validate_json(json.loads(first["message"]["content"]), QA)
    assert first["message"]["content"] == parts["task-0"]["text"]
    content = first["logprobs"]["content"]
    assert len(content) == got["task-0"]["response"]["body"]["usage"]["completion_tokens"]
    # Every generated token, the end-of-sequence token included (as in completion_tokens).
    assert "".join(t["token"] for t in content).removesuffix("</s>") == first["message"]["content"]
    for t in content:
        assert t["bytes"] == list(t["token"].encode()) and t["logprob"] <= 0 and len(t["top_logprobs"]) == 2
    # json_object, n=2: every choice is a JSON object with its own logprobs (top_logprobs unset: none).
    choices = got["task-1"]["response"]["body"]["choices"]
    assert len(choices) == 2
    for c in choices:
        assert isinstance(json.loads(c["message"]["content"]), dict)
        assert c["logprobs"]["content"] and all(t["top_logprobs"] == [] for t in c["logprobs"]["content"])
    assert got["task-2"]["response"]["body"]["choices"][0]["logprobs"] is None
    cut = got["task-3"]
    assert cut["response"]["status_code"] == 200 and cut["response"]["body"]["choices"][0]["finish_reason"] == "length"
    assert parts["task-3"]["error"].startswith("invalid JSON: cut by max_tokens")
