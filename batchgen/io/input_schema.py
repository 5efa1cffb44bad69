"""Which input column types a job can use, and one schema for a job's shards.

Ids are text or integers: they key exactly-once resume and the user's join back, so they must
compare the same in every shard and print as themselves. Bytes (maybe not UTF-8), floats (1.0 vs 1),
nulls and nested values are refused before the engine starts. Other columns may differ in width or
nullability between shards (int32 here, int64 there; string and large_string), never in kind, except
the `free` ones a job reads cell by cell without writing them (an image column: bytes in one shard, paths
in another).
"""

from __future__ import annotations

import posixpath
from typing import Mapping, Sequence

import pyarrow as pa

from batchgen.errors import InputError


def id_type_ok(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def check_id_type(field: pa.Field, shard: str) -> None:
    """Refuse an id column that is not text or integers."""
    t = field.type
    if id_type_ok(t):
        return
    if pa.types.is_null(t):
        why, fix = "holds only nulls (Arrow type null)", "fill the ids, or point input.id_column at the column that has them"
    elif pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        why, fix = (f"holds bytes ({t}), not text", "cast it to text (polars: pl.col(c).cast(pl.Utf8) for UTF-8 bytes, "
                    "or .bin.encode('hex')), or use another id column")
    else:
        why, fix = f"has type {t}", "cast it to text or integers (floats, dates and nested values do not key rows reliably)"
    raise InputError(f"id column {field.name!r} {why}: ids must be text or integers", where=shard, fix=fix)


def common_schema(schemas: Mapping[str, pa.Schema], needed: Sequence[str], id_column: str,
                  free: Sequence[str] = ()) -> pa.Schema:
    """One schema for the `needed` columns of every shard (widest type of each); a column whose kind differs
    between shards is an InputError naming the column and two shards that disagree (`free` columns may:
    the first shard's type stands for them)."""
    fields: dict[str, tuple[pa.Field, str]] = {}  # column -> (its unified field so far, the first shard)
    for shard, schema in schemas.items():
        for col in needed:
            f = schema.field(col)
            if col not in fields:
                fields[col] = (f, shard)
                continue
            if col in free:
                continue
            seen, first = fields[col]
            try:
                merged = pa.unify_schemas([pa.schema([seen]), pa.schema([f])], promote_options="permissive").field(col)
            except (pa.ArrowTypeError, pa.ArrowInvalid):
                merged = None
            if merged is None or (col == id_column and not id_type_ok(merged.type)):
                raise InputError(
                    f"column {col!r} is {f.type} here but {seen.type} in {posixpath.basename(first)}",
                    where=shard, fix=f"write {col!r} with one type in every shard (cast it, e.g. with polars .cast), "
                                     "or leave the odd shard out of input.path")
            fields[col] = (merged, first)
    return pa.schema([fields[c][0] for c in needed if c in fields])
