"""`sampling.structured`: constrained decoding, one kind per job (or per row), as vLLM's StructuredOutputsParams.

A JSON schema is checked here against the JSON Schema meta-schema (the `jsonschema` package, which
vLLM itself depends on), so a schema that does not parse fails when the job loads, naming the key.
Whether vLLM's grammar backend can *compile* it is checked before the engine starts, by the engine
layer (`engine.params.check_structured`).
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

KINDS = ("choice", "regex", "json_schema", "grammar", "json_object")


@lru_cache(maxsize=256)
def _schema_problem(canonical: str) -> str | None:
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    schema = json.loads(canonical)
    cls = validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as e:
        where = e.json_path if getattr(e, "json_path", "$") != "$" else "the top level"
        return f"not a valid JSON Schema ({cls.__name__.removesuffix('Validator')}): {e.message} at {where}"
    return None


def check_json_schema(schema: Any) -> None:
    """Raise ValueError if `schema` is not a JSON Schema (its meta-schema, by `$schema`, default 2020-12).

    Cached by content: per-row schemas repeat, and the meta-schema check costs about a millisecond.
    """
    if not isinstance(schema, dict):
        raise ValueError(f"a JSON schema must be an object (a mapping), got {type(schema).__name__}")
    problem = _schema_problem(json.dumps(schema, sort_keys=True))
    if problem:
        raise ValueError(problem)


class StructuredSpec(BaseModel):
    """Constrain every completion with vLLM's structured outputs. Set exactly one kind."""

    # As spec.Strict (which imports this module): a typo is an error, assignments are validated.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    choice: list[str] | None = Field(None, min_length=1, description="The completion is exactly one of these strings; the output's `label` column holds it.")
    regex: str | None = Field(None, description="The completion matches this regular expression (the grammar backend's dialect: xgrammar by default).")
    json_schema: dict[str, Any] | str | None = Field(None, description="The completion is JSON valid under this JSON Schema: a mapping written inline, or the path or URL (local, s3://, any fsspec URL; read with input.storage) of a .json file, read once when a run starts. The output's `parsed` column holds the JSON, validated after generation.")
    grammar: str | None = Field(None, description="The completion follows this grammar: EBNF/GBNF (xgrammar) or Lark (guidance).")
    json_object: bool | None = Field(None, description="true: the completion is a JSON object with any keys (OpenAI's json_object mode). The output's `parsed` column holds it.")

    @model_validator(mode="after")
    def _exactly_one(self) -> StructuredSpec:
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of choice, regex, json_schema, grammar or json_object"
                             + (f" (got {', '.join(given)})" if given else ""))
        return self

    @field_validator("choice")
    @classmethod
    def _choices(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if any(not c for c in v):
                raise ValueError("choices must be non-empty strings")
            if len(set(v)) != len(v):
                raise ValueError(f"choices repeat: {sorted({c for c in v if v.count(c) > 1})}")
        return v

    @field_validator("json_schema")
    @classmethod
    def _schema(cls, v: dict[str, Any] | str | None) -> dict[str, Any] | str | None:
        if isinstance(v, str) and not v.strip():
            raise ValueError("give a JSON schema inline, or the path/URL of a .json file")
        if isinstance(v, dict):
            check_json_schema(v)
        return v

    @field_validator("grammar")
    @classmethod
    def _grammar(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("the grammar is empty")
        return v

    @field_validator("json_object")
    @classmethod
    def _json_object(cls, v: bool | None) -> bool | None:
        if v is False:
            raise ValueError("json_object takes only `true`; remove sampling.structured for free text")
        return v

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) is not None)

    @property
    def is_json(self) -> bool:
        return self.json_schema is not None or bool(self.json_object)

    @property
    def schema_file(self) -> str | None:
        """The path/URL of a schema still to read (None once read, or when inline)."""
        return self.json_schema if isinstance(self.json_schema, str) else None
