"""The OpenAI Batch API file format, both ways: request JSONL in, response JSONL out.

Requests become ordinary Arrow record batches (id = custom_id, messages, one column per sampling
field of the body), so planning, prompts, the engine and commits treat them like Parquet rows. A
line that cannot become a request (bad JSON, unsupported endpoint, a wrong type) still becomes a
row, with its reason in `read_error`: bad rows are data, and the job goes on.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa

from batchgen.io import openai_structured
from batchgen.job.spec import OPENAI_BODY_FIELDS

# A reader-side reason why a row cannot be generated; prompts.Renderer turns it into an error row.
READ_ERROR = "read_error"
CHAT_URL = "/v1/chat/completions"
# A message's text parts joined, and its image_url parts' URLs in order (data:, http(s), s3://, paths).
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string()), ("images", pa.list_(pa.string()))])
_INT_FIELDS = {"max_tokens", "seed", "n"}
_TYPES: dict[str, pa.DataType] = {
    **{f: pa.float64() for f in OPENAI_BODY_FIELDS}, **{f: pa.int64() for f in _INT_FIELDS}, "stop": pa.list_(pa.string()),
}
# Body keys that do not change what is generated; anything else unknown is refused per row, not ignored.
_HARMLESS = {"model", "messages", "max_completion_tokens", "user", "stream", "store", "metadata"}


def request_schema(id_column: str) -> pa.Schema:
    """Columns a request file offers to a job (what `prompt`, `sampling.per_row` and passthrough may name)."""
    return pa.schema([(id_column, pa.string()), ("messages", pa.list_(MESSAGE)), ("model", pa.string()),
                      *[(f, _TYPES[f]) for f in OPENAI_BODY_FIELDS], *openai_structured.COLUMNS])


def count_rows(lines: Iterator[bytes]) -> int:
    """Requests in a file: its non-blank lines (the row index of a request counts only those)."""
    return sum(1 for line in lines if line.strip())


def parse_request(line: bytes | str, id_column: str) -> tuple[dict[str, Any], str | None]:
    """One request line as a row, and the reason it cannot be generated (None if it can)."""
    row: dict[str, Any] = {id_column: None}
    try:
        obj = json.loads(line)
    except ValueError as e:
        return row, f"not valid JSON: {e}"
    if not isinstance(obj, dict):
        return row, "a request line must be a JSON object with custom_id, method, url and body"
    cid = obj.get("custom_id")
    row[id_column] = None if cid is None else str(cid)
    if obj.get("method", "POST") != "POST":
        return row, f"method must be POST, got {obj.get('method')!r}"
    url = obj.get("url", CHAT_URL)
    if not isinstance(url, str) or not url.rstrip("/").endswith("chat/completions"):
        return row, f"only {CHAT_URL} requests are supported, got url {url!r}"
    body = obj.get("body")
    if not isinstance(body, dict):
        return row, "body must be an object with messages and sampling parameters"
    row["model"] = body.get("model") if isinstance(body.get("model"), str) else None
    messages, err = _messages(body.get("messages"))
    row["messages"] = messages
    if err:
        return row, err
    if "max_completion_tokens" in body:
        body = {**body, "max_tokens": body["max_completion_tokens"]}
    for name in OPENAI_BODY_FIELDS:
        value, err = _typed(name, body.get(name))
        if err:
            return row, err
        row[name] = value
    options, err = openai_structured.request_options(body)  # response_format, logprobs/top_logprobs
    row.update(options)
    if err:
        return row, err
    unknown = sorted(set(body) - set(OPENAI_BODY_FIELDS) - _HARMLESS - openai_structured.BODY_KEYS)
    if unknown:
        return row, f"body.{unknown[0]} is not supported by batchgen (it would be ignored)"
    return row, None


def _messages(value: Any) -> tuple[list[dict] | None, str | None]:
    if not isinstance(value, list) or not value:
        return None, "body.messages must be a non-empty list of {role, content}"
    out = []
    for k, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            return None, f"body.messages[{k}] needs a string role"
        content, images = m.get("content"), []
        if isinstance(content, list):  # content parts: text and image_url
            content, images, err = _parts(content, k)
            if err:
                return None, err
        if not isinstance(content, str):
            return None, f"body.messages[{k}].content must be a string or text/image_url parts"
        out.append({"role": m["role"], "content": content, "images": images or None})
    return out, None


def _parts(parts: list, k: int) -> tuple[str, list[str], str | None]:
    """Text parts joined; image_url parts as their URLs (the images go in front of the text, as vLLM's
    chat path places them for templates that take strings)."""
    texts, images = [], []
    for p in parts:
        kind = p.get("type") if isinstance(p, dict) else None
        if kind == "text":
            texts.append(str(p.get("text", "")))
        elif kind == "image_url":
            ref = p.get("image_url")
            url = ref.get("url") if isinstance(ref, dict) else ref
            if not isinstance(url, str) or not url:
                return "", [], f"body.messages[{k}] has an image_url part without a url"
            images.append(url)
        else:
            return "", [], f"body.messages[{k}] has a {kind!r} content part; only text and image_url are supported"
    return "".join(texts), images, None


def _typed(name: str, value: Any) -> tuple[Any, str | None]:
    if value is None:
        return None, None
    if name == "stop":
        if isinstance(value, str):
            return [value], None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value, None
        return None, f"body.stop must be a string or a list of strings, got {value!r}"
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if name in _INT_FIELDS:
        if numeric and float(value).is_integer():
            return int(value), None
        return None, f"body.{name} must be an integer, got {value!r}"
    if numeric:
        return float(value), None
    return None, f"body.{name} must be a number, got {value!r}"


def iter_request_batches(lines: Iterator[bytes], columns: Sequence[str], id_column: str, batch_rows: int,
                         done: np.ndarray | None, row_index: str) -> Iterator[pa.RecordBatch]:
    """Record batches of `columns` plus `row_index` and `read_error`, skipping rows marked in `done`."""
    schema = request_schema(id_column)
    fields = [schema.field(c) for c in columns] + [pa.field(row_index, pa.int64()), pa.field(READ_ERROR, pa.string())]
    out_schema = pa.schema(fields)
    rows: list[dict[str, Any]] = []
    n = 0
    for line in lines:
        if not line.strip():
            continue
        if done is None or not done[n]:
            row, err = parse_request(line, id_column)
            row[row_index], row[READ_ERROR] = n, err
            rows.append(row)
            if len(rows) >= batch_rows:
                yield pa.RecordBatch.from_pylist(rows, schema=out_schema)
                rows = []
        n += 1
    if rows:
        yield pa.RecordBatch.from_pylist(rows, schema=out_schema)


# -- output ----------------------------------------------------------------------------------------

def response_line(row: dict[str, Any], id_column: str, model: str, created: int) -> dict[str, Any]:
    """One output line of the OpenAI batch format for a committed row (success or error row)."""
    cid = row[id_column]
    token = hashlib.blake2b(f"{cid}\x1f{row.get('seed')}".encode(), digest_size=12).hexdigest()
    request_id = f"batch_req_{token}"
    if row.get("error") is not None and row.get("text") is None:  # not generated (a generated row's error: JSON cut or invalid)
        return {"id": request_id, "custom_id": cid, "response": {"status_code": 400, "request_id": request_id, "body": None},
                "error": {"code": "batchgen_row_error", "message": row["error"]}}
    completions = row.get("completions") or [
        {"text": row.get("text"), "finish_reason": row.get("finish_reason"), "output_tokens": row.get("output_tokens")}]
    if not row.get("completions") and "logprobs" in row:
        completions[0]["logprobs"] = row["logprobs"]
    choices = [{"index": i, "message": {"role": "assistant", "content": c["text"]},
                "logprobs": openai_structured.choice_logprobs(c.get("logprobs")),
                "finish_reason": c["finish_reason"]} for i, c in enumerate(completions)]
    prompt, output = int(row.get("prompt_tokens") or 0), int(row.get("output_tokens") or 0)
    body = {"id": f"chatcmpl-{token}", "object": "chat.completion", "created": created, "model": model, "choices": choices,
            "usage": {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output,
                      "prompt_tokens_details": {"cached_tokens": int(row.get("cached_tokens") or 0)}}}
    return {"id": request_id, "custom_id": cid, "response": {"status_code": 200, "request_id": request_id, "body": body},
            "error": None}


def responses_jsonl(rows: Sequence[dict[str, Any]], id_column: str, model: str, created: int) -> bytes:
    return "".join(json.dumps(response_line(r, id_column, model, created), ensure_ascii=False) + "\n" for r in rows).encode()
