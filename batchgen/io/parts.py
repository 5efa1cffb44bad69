"""The output Arrow schema and part files (Parquet bytes with batchgen's metadata in the footer)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from batchgen.io import columns
from batchgen.job.spec import JobSpec

META_KEY = b"batchgen"

COMPLETION = pa.struct([("text", pa.string()), ("finish_reason", pa.string()), ("output_tokens", pa.int32())])


def output_schema(spec: JobSpec, input_schema: pa.Schema) -> pa.Schema:
    """The columns of every part file (documented in schemas/output.md)."""
    fields = [
        pa.field(spec.input.id_column, input_schema.field(spec.input.id_column).type),
        pa.field("text", pa.string()),
        pa.field("finish_reason", pa.string()),
    ]
    extra = columns.completion_fields(spec)
    if spec.sampling.n > 1 or "n" in spec.sampling.per_row:
        fields.append(pa.field("completions", pa.list_(pa.struct(list(COMPLETION) + extra))))
    fields += extra + columns.row_fields(spec) + [
        pa.field("prompt_tokens", pa.int32()),
        pa.field("output_tokens", pa.int32()),
        pa.field("cached_tokens", pa.int32()),
        pa.field("seed", pa.int64()),
        pa.field("error", pa.string()),
        pa.field("row_index", pa.int64()),
    ]
    taken = {f.name for f in fields}
    for col in spec.output.passthrough_columns:
        if col not in taken:
            fields.append(input_schema.field(col))
    return pa.schema(fields)


@dataclass
class OutputRow:
    """One finished row, successful or not."""

    id: Any
    row_index: int
    seed: int
    texts: list[str] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    output_tokens: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    error: str | None = None
    passthrough: dict[str, Any] = field(default_factory=dict)
    invalid_json: bool = False  # generated, but the JSON failed its check (the reason is in `error`)
    completion_extras: list[dict[str, Any]] = field(default_factory=list)  # per completion: label, parsed, logprobs, ...
    extras: dict[str, Any] = field(default_factory=dict)  # per row: label_scores, prompt_logprobs, scores (io.columns)


def build_table(schema: pa.Schema, id_column: str, rows: Sequence[OutputRow]) -> pa.Table:
    rows = sorted(rows, key=lambda r: r.row_index)  # parts read in input order; ids and content unaffected
    # A row that was generated keeps its text even with an error (a JSON that failed its check).
    ok = [bool(r.texts) for r in rows]
    cols: dict[str, list] = {
        id_column: [r.id for r in rows],
        "text": [r.texts[0] if good and r.texts else None for r, good in zip(rows, ok)],
        "finish_reason": [r.finish_reasons[0] if good and r.finish_reasons else None for r, good in zip(rows, ok)],
        "completions": [
            [{"text": t, "finish_reason": f, "output_tokens": n, **(r.completion_extras[k] if k < len(r.completion_extras) else {})}
             for k, (t, f, n) in enumerate(zip(r.texts, r.finish_reasons, r.output_tokens))]
            if good else None for r, good in zip(rows, ok)
        ],
        "prompt_tokens": [r.prompt_tokens for r in rows],
        "output_tokens": [sum(r.output_tokens) for r in rows],
        "cached_tokens": [r.cached_tokens for r in rows],
        "seed": [r.seed for r in rows],
        "error": [r.error for r in rows],
        "row_index": [r.row_index for r in rows],
    }
    first = [r.completion_extras[0] if r.completion_extras else {} for r in rows]
    arrays = []
    for f in schema:
        if f.name in cols:
            values = cols[f.name]
        elif f.name in columns.OPTIONAL:
            values = [c.get(f.name) if f.name in c else r.extras.get(f.name) for r, c in zip(rows, first)]
        else:
            values = [r.passthrough.get(f.name) for r in rows]
        arrays.append(pa.array(values, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def to_parquet_bytes(table: pa.Table, compression: str, meta: dict[str, Any]) -> bytes:
    schema = table.schema.with_metadata({**(table.schema.metadata or {}), META_KEY: json.dumps(meta).encode()})
    buf = io.BytesIO()
    pq.write_table(table.cast(schema), buf, compression=None if compression == "none" else compression)
    return buf.getvalue()


def read_meta(data: bytes) -> dict[str, Any]:
    md = pq.ParquetFile(io.BytesIO(data)).schema_arrow.metadata or {}
    return json.loads(md.get(META_KEY, b"{}"))
