"""Streaming reads of one work unit: projected columns, one record batch at a time."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from batchgen.errors import InputError
from batchgen.io.store import open_fs
from batchgen.plan import Unit
from batchgen.spec import InputSpec

ROW_INDEX = "row_index"


def check_columns(spec: InputSpec, shard: str, needed: Sequence[str]) -> pa.Schema:
    """Fail before the engine starts if a shard lacks a column the job reads."""
    fs, _ = open_fs(_url_of(spec), spec.storage)
    with fs.open(shard, "rb") as f:
        schema = pq.ParquetFile(f).schema_arrow
    missing = [c for c in needed if c not in schema.names]
    if missing:
        raise InputError(
            f"missing column(s) {', '.join(missing)}; the file has {', '.join(schema.names)}",
            where=shard,
            fix="rename the column in the data or point the job at it (input.id_column, prompt.*, sampling.per_row, output.passthrough_columns)",
        )
    return schema


def read_unit(spec: InputSpec, unit: Unit, columns: Sequence[str], done: np.ndarray | None = None) -> Iterator[pa.RecordBatch]:
    """Yield record batches of `unit` with a `row_index` column (row number in the shard), skipping `done` rows.

    `done` is a bool array over the unit's rows (True = already committed).
    """
    fs, _ = open_fs(_url_of(spec), spec.storage)
    with fs.open(unit.shard, "rb") as f:
        pf = pq.ParquetFile(f)
        row = unit.row_start
        for batch in pf.iter_batches(batch_size=spec.batch_rows, row_groups=list(unit.row_groups), columns=list(columns)):
            idx = pa.array(np.arange(row, row + batch.num_rows, dtype=np.int64))
            batch = batch.append_column(ROW_INDEX, idx)
            if done is not None:
                keep = ~done[row - unit.row_start: row - unit.row_start + batch.num_rows]
                if not keep.all():
                    batch = batch.filter(pa.array(keep))
            row += len(idx)
            if batch.num_rows:
                yield batch


def _url_of(spec: InputSpec) -> str:
    return spec.path[0] if isinstance(spec.path, list) else spec.path
