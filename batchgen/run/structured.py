"""Structured outputs around the engine: the job's schema file, per-row constraints, and the checks after generation.

    prepare   a `json_schema` given as a path/URL is read once (io.jsonfile) and checked, before the engine
    render    per-row cells (structured_schema, choices, json_object) become the row's `structured`
    finish    what a completion carries besides text: `parsed` (JSON validated against the row's schema),
              `label` (the choice made), logprobs, label scores, and scoring-mode sums (run.scoring)

A completion that fails its check (JSON cut by max_tokens, or not matching the schema) keeps its text
and gets the reason in `error`; it is counted as `invalid_json` and, like every committed row, never
regenerated on resume.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from batchgen.engine.base import Completion, Request
from batchgen.errors import SpecError
from batchgen.io.jsonfile import read_json
from batchgen.io.parts import OutputRow
from batchgen.job.spec import JobSpec
from batchgen.job.structured import StructuredSpec
from batchgen.run import scoring

SCHEMA_KEY = "sampling.structured.json_schema"
# Per-row fields that set the row's `structured` (one per row), and the kind each becomes.
ROW_KINDS = {"structured_schema": "json_schema", "choices": "choice", "json_object": "json_object"}


def load_schema_file(spec: JobSpec) -> None:
    """Read a json_schema given as a path/URL into the spec (once per run, before the engine starts).

    The schema's content, not its path, is then part of the job's fingerprint: editing the file
    between a run and its resume is caught like any other changed setting."""
    st = spec.sampling.structured
    url = st.schema_file if st else None
    if url is None:
        return
    schema = read_json(url, spec.input.storage, SCHEMA_KEY)
    try:
        st.json_schema = schema
    except ValidationError as e:
        msg = e.errors()[0]["msg"].removeprefix("Value error, ")
        raise SpecError(f"{url}: {msg}", where=SCHEMA_KEY, fix="fix the schema file (see https://json-schema.org)") from None


class RowValueError(ValueError):
    """A per-row structured cell that cannot be used; the message is the row's error."""


def row_fields(values: dict[str, Any], columns: dict[str, str], row_id: Any) -> tuple[dict[str, Any], str | None]:
    """Per-row cells as SamplingSpec fields: a structured_schema, choices or json_object cell becomes the
    row's `structured`. Returns the fields and the per-row field that set `structured` (None: none did)."""
    given = [f for f in ROW_KINDS if f in values]
    if not given:
        return values, None
    if len(given) > 1:
        raise RowValueError(f"invalid per-row value in columns {', '.join(repr(columns[f]) for f in given)} (row id "
                            f"{row_id!r}): a row takes one structured constraint, got {', '.join(given)}")
    field = given[0]
    out = {k: v for k, v in values.items() if k not in ROW_KINDS}
    value = values[field]
    if field == "structured_schema":
        value = _row_schema(value, columns[field], row_id)
    out["structured"] = {ROW_KINDS[field]: value}
    return out, field


def _row_schema(cell: Any, column: str, row_id: Any) -> Any:
    if not isinstance(cell, str):
        raise RowValueError(f"invalid per-row value in column {column!r} for structured_schema (row id {row_id!r}): "
                            f"a JSON schema as a JSON string, got {type(cell).__name__}")
    try:
        return _parse(cell)
    except ValueError as e:
        raise RowValueError(f"invalid per-row value in column {column!r} for structured_schema (row id {row_id!r}): "
                            f"not valid JSON: {e}") from None


@lru_cache(maxsize=256)
def _parse(text: str) -> Any:
    return json.loads(text)


# -- after generation ---------------------------------------------------------------------------

@lru_cache(maxsize=256)
def _validator(canonical: str) -> Any:
    from jsonschema.validators import validator_for

    schema = json.loads(canonical)
    return validator_for(schema)(schema)


def check_json(text: str, st: StructuredSpec, finish_reason: str) -> tuple[str | None, str | None]:
    """(the JSON, compact, if `text` is valid under `st`; else None, the reason)."""
    from jsonschema.exceptions import best_match

    cut = finish_reason == "length"
    try:
        value = json.loads(text)
    except ValueError as e:
        return None, ("invalid JSON: cut by max_tokens before the JSON ended (raise sampling.max_tokens)" if cut
                      else f"invalid JSON: {e}")
    if st.json_object and not isinstance(value, dict):
        return None, f"invalid JSON: a JSON object was asked for, got {type(value).__name__}"
    if isinstance(st.json_schema, dict):
        err = best_match(_validator(json.dumps(st.json_schema, sort_keys=True)).iter_errors(value))
        if err is not None:
            return None, f"invalid JSON: does not match the schema: {err.message} at {err.json_path}"[:500]
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")), None


def finish_row(row: OutputRow, req: Request, c: Completion) -> None:
    """Fill the row's optional columns from the completion; a failed check sets `error` (text kept)."""
    st = req.sampling.structured
    if c.error is not None or not c.texts or (st is None and c.logprobs is None and c.prompt_logprobs is None):
        return  # a plain row: nothing to add (the host cost of plain jobs stays what it was)
    per: list[dict[str, Any]] = [{} for _ in c.texts]
    problems: list[tuple[int, str]] = []
    for k, (text, reason) in enumerate(zip(c.texts, c.finish_reasons)):
        if reason == "error":
            problems.append((k, "vLLM ended the request with finish_reason 'error' (e.g. its grammar failed in the engine)"))
        elif st is not None and st.is_json:
            per[k]["parsed"], problem = check_json(text, st, reason)
            if problem:
                row.invalid_json = True
                problems.append((k, problem))
        elif st is not None and st.choice is not None:
            per[k]["label"] = text if text in st.choice else None
            if per[k]["label"] is None:
                problems.append((k, "the completion is not one of the choices: " + (
                    "cut by max_tokens (raise sampling.max_tokens)" if reason == "length" else f"{text[:100]!r}")))
        if c.logprobs is not None:
            per[k]["logprobs"] = c.logprobs[k]
            per[k]["cumulative_logprob"] = c.cumulative_logprobs[k] if c.cumulative_logprobs else None
    row.completion_extras = per
    if c.label_scores is not None:
        row.extras["label_scores"] = c.label_scores
    if c.prompt_logprobs is not None:
        row.extras["prompt_logprobs"] = c.prompt_logprobs
        if req.score_from is not None:
            row.extras.update(scoring.score_columns(c.prompt_logprobs, req.score_from))
    if problems:
        row.error = problems[0][1] if len(c.texts) == 1 else "; ".join(
            f"completion {k + 1} of {len(c.texts)}: {p}" for k, p in problems)[:1000]
