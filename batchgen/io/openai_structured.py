"""OpenAI Batch bodies' `response_format` and `logprobs`/`top_logprobs`, mapped onto batchgen's per-row options, and
the logprobs of a committed row in OpenAI's response shape (`choices[i].logprobs.content`).

    response_format {"type": "json_schema", "json_schema": {"schema": S}}  ->  column structured_schema = S as JSON
    response_format {"type": "json_object"}                                ->  column json_object = true
    logprobs: true, top_logprobs: K                                        ->  column logprobs = K (0 if unset)

The job's `sampling.per_row` maps these columns (JobSpec adds them for `input.format: openai_batch`).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pyarrow as pa

COLUMNS = [("structured_schema", pa.string()), ("json_object", pa.bool_()), ("logprobs", pa.int64())]
BODY_KEYS = frozenset({"response_format", "logprobs", "top_logprobs"})  # consumed here
MAX_TOP_LOGPROBS = 20  # OpenAI's limit (and vLLM's default max_logprobs)
# OpenAI writes a log probability of minus infinity (a token a constraint forbids) as -9999.0.
NEG_INF = -9999.0


def request_options(body: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The row's structured_schema, json_object and logprobs cells from a request body, or the reason it cannot be served."""
    row: dict[str, Any] = {name: None for name, _ in COLUMNS}
    fmt = body.get("response_format")
    if fmt is not None:
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind not in ("text", "json_object", "json_schema"):
            return row, f"body.response_format.type must be text, json_object or json_schema, got {kind!r}"
        if kind == "json_object":
            row["json_object"] = True
        elif kind == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema") if isinstance(fmt.get("json_schema"), dict) else None
            if not isinstance(schema, dict):
                return row, "body.response_format.json_schema.schema must be a JSON schema object"
            row["structured_schema"] = json.dumps(schema)
    wanted, top = body.get("logprobs"), body.get("top_logprobs")
    if wanted is not None and not isinstance(wanted, bool):
        return row, f"body.logprobs must be true or false, got {wanted!r}"
    if top is not None:
        if not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= MAX_TOP_LOGPROBS:
            return row, f"body.top_logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS}, got {top!r}"
        if not wanted:
            return row, "body.top_logprobs needs body.logprobs: true"
    if wanted:
        row["logprobs"] = top or 0
    return row, None


def choice_logprobs(tokens: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """A completion's `logprobs` column value as OpenAI's choices[i].logprobs (None: not asked for)."""
    if tokens is None:
        return None
    return {"content": [{**_entry(t), "top_logprobs": [_entry(a) for a in t.get("top_logprobs") or []]} for t in tokens],
            "refusal": None}


def _entry(t: dict[str, Any]) -> dict[str, Any]:
    text = t.get("token") or ""
    lp = t.get("logprob")
    return {"token": text, "logprob": NEG_INF if lp is None or lp == -math.inf else float(lp), "bytes": list(text.encode())}
