"""Are the input's ids unique across all shards? Read only the id column, in bounded memory.

First pass: 8 bytes per row (a 64-bit hash of each id). Second pass, only if some hash was seen
twice: the id column again, to name the actual ids and where they are (shard, row). Ids hash by
their own type (the shards' id types agree: io.shards checks that before), so an integer id is not
turned into text on the way. Used by `batchgen run` before the engine starts and by `validate`.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import polars as pl
import pyarrow as pa

from batchgen.io.reader import ROW_INDEX, read_unit
from batchgen.io.shards import InputFiles, ShardLayout, Unit, common_root

SCAN_BATCH_ROWS = 65_536  # the id column alone: large batches keep the per-batch cost out of the way
EXAMPLES = 50  # duplicated ids whose places are kept (all of them are counted)


@dataclass
class DuplicateIds:
    ids: int = 0  # distinct ids that appear more than once
    rows: int = 0  # rows holding such an id
    examples: list[tuple[Any, list[tuple[str, int]]]] = field(default_factory=list)  # id -> [(shard, row)]; shard
    # paths relative to the shards' common folder

    def __bool__(self) -> bool:
        return self.ids > 0

    def describe(self, shown: int = 3) -> str:
        """'2 duplicate id(s): 'a' 2 times (x.parquet row 0, y.parquet row 3); ...'"""
        parts = []
        for value, places in self.examples[:shown]:
            where = ", ".join(f"{s} row {r}" for s, r in places[:4]) + (", ..." if len(places) > 4 else "")
            parts.append(f"{value!r} {len(places)} times ({where})")
        more = f"; {self.ids - shown} more" if self.ids > shown else ""
        return f"{self.ids} duplicate id(s) in {self.rows} rows: " + "; ".join(parts) + more

    def as_record(self) -> dict[str, Any]:
        return {"ids": self.ids, "rows": self.rows,
                "examples": [[_jsonable(v), [list(p) for p in places]] for v, places in self.examples[:5]]}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> DuplicateIds:
        return cls(record.get("ids", 0), record.get("rows", 0),
                   [(v, [tuple(p) for p in places]) for v, places in record.get("examples", [])])


def whole_shards(layouts: Sequence[ShardLayout]) -> list[Unit]:
    """One unit per shard, every row group: each row group is decoded once (plan units may cut one group in pieces)."""
    return [Unit(key=lay.shard, shard=lay.shard, row_start=0, row_end=lay.rows, row_groups=tuple(range(len(lay.groups_rows))))
            for lay in layouts]


def hash_ids(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """64-bit hashes of the non-null ids."""
    return pl.Series(ids).drop_nulls().hash(seed=0).to_numpy()


def find_duplicates(source: InputFiles, units: Sequence[Unit], id_column: str,
                    hashes: list[np.ndarray] | None = None) -> DuplicateIds:
    """The ids of `units` that appear more than once. `hashes`: from a pass that read the ids already (validate)."""
    if hashes is None:
        hashes = [hash_ids(batch.column(id_column)) for batch in _ids(source, units, id_column)]
    if not hashes:
        return DuplicateIds()
    values, counts = np.unique(np.concatenate(hashes), return_counts=True)
    suspects = values[counts > 1]
    if not suspects.size:
        return DuplicateIds()
    return _places(source, units, id_column, suspects)


def _places(source: InputFiles, units: Sequence[Unit], id_column: str, suspects: np.ndarray) -> DuplicateIds:
    """Second pass: which ids hash to a suspect (a collision is not a duplicate), and where they are."""
    seen: dict[Any, int] = {}
    where: dict[Any, list[tuple[str, int]]] = {}
    root = common_root(sorted({u.shard for u in units}))
    for unit, batch in _ids_by_unit(source, units, id_column):
        name = posixpath.relpath(unit.shard, root) if root else unit.shard
        series = pl.Series(batch.column(id_column))
        hit = np.isin(series.hash(seed=0).to_numpy(), suspects) & ~series.is_null().to_numpy()
        rows = batch.column(ROW_INDEX).to_numpy()
        for k in np.flatnonzero(hit):
            value = series[int(k)]
            seen[value] = seen.get(value, 0) + 1
            if value in where or len(where) < EXAMPLES * 4:
                where.setdefault(value, []).append((name, int(rows[k])))
    dup = {v: n for v, n in seen.items() if n > 1}
    examples = sorted((v, p) for v, p in where.items() if v in dup)[:EXAMPLES]
    return DuplicateIds(ids=len(dup), rows=sum(dup.values()), examples=examples)


def _ids(source: InputFiles, units: Sequence[Unit], id_column: str) -> Iterator[pa.RecordBatch]:
    for _, batch in _ids_by_unit(source, units, id_column):
        yield batch


def _ids_by_unit(source: InputFiles, units: Sequence[Unit], id_column: str) -> Iterator[tuple[Unit, pa.RecordBatch]]:
    for unit in units:
        for batch in read_unit(source, unit, [id_column], batch_rows=SCAN_BATCH_ROWS):
            yield unit, batch


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (str, int)) else repr(value)
