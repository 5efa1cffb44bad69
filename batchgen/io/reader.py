"""Streaming reads of one work unit: projected columns, one record batch at a time.

Object stores fail transiently mid-stream; a Parquet read then reopens the shard and resumes after
the last row it yielded (bounded by the input's retry policy), so a blip in S3 costs a few requests,
not the run.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from batchgen.io import openai_batch
from batchgen.io.retry import is_transient
from batchgen.io.shards import InputFiles, Unit

ROW_INDEX = "row_index"


def read_unit(source: InputFiles, unit: Unit, columns: Sequence[str], done: np.ndarray | None = None,
              batch_rows: int | None = None) -> Iterator[pa.RecordBatch]:
    """Yield record batches of `unit` with a `row_index` column (row number in the shard), skipping `done` rows.

    `done` is a bool array over the unit's rows (True = already committed). `batch_rows`: rows per batch
    (default input.batch_rows).
    """
    spec = source.spec
    batch_rows = batch_rows or spec.batch_rows
    if spec.format == "openai_batch":
        with source.fs.open(unit.shard, "rb") as f:
            yield from openai_batch.iter_request_batches(f, columns, spec.id_column, batch_rows, done, ROW_INDEX)
        return
    row = unit.row_start
    for batch in _parquet_batches(source, unit, columns, batch_rows):
        idx = pa.array(np.arange(row, row + batch.num_rows, dtype=np.int64))
        batch = batch.append_column(ROW_INDEX, idx)
        if done is not None:
            keep = ~done[row - unit.row_start: row - unit.row_start + batch.num_rows]
            if not keep.all():
                batch = batch.filter(pa.array(keep))
        row += len(idx)
        if batch.num_rows:
            yield batch


def _parquet_batches(source: InputFiles, unit: Unit, columns: Sequence[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The unit's record batches in order; after a transient error, reopen and skip the rows already yielded.

    A unit may be a piece of a row group (work.plan.cut_shard): the rows of its group before it are read and
    skipped, and reading stops at its last row.
    """
    fs, policy = source.fs, source.retry
    sent, failures = 0, 0
    while True:
        try:
            with fs.open(unit.shard, "rb") as f:
                pf = pq.ParquetFile(f)
                head = unit.row_start - _group_start(pf.metadata, unit.row_groups[0]) if unit.row_groups else 0
                groups, skip = _resume_point(pf.metadata, unit.row_groups, head + sent)
                for batch in pf.iter_batches(batch_size=batch_rows, row_groups=groups, columns=list(columns)):
                    if skip:
                        batch, skip = batch.slice(min(skip, batch.num_rows)), max(0, skip - batch.num_rows)
                    batch = batch.slice(0, min(batch.num_rows, unit.rows - sent))
                    if batch.num_rows:
                        sent += batch.num_rows
                        failures = 0  # progress made: the attempt budget is per stall, not per unit
                        yield batch
                    if sent >= unit.rows:
                        return
            return
        except Exception as e:  # noqa: BLE001 - only transient errors are retried
            if not is_transient(e):
                raise
            policy.backoff(f"read {unit.shard} (row {unit.row_start + sent})", e, failures)
            failures += 1


def _group_start(meta: pq.FileMetaData, group: int) -> int:
    """The shard row where row group `group` begins."""
    return sum(meta.row_group(rg).num_rows for rg in range(group))


def _resume_point(meta: pq.FileMetaData, groups: Sequence[int], sent: int) -> tuple[list[int], int]:
    """Row groups still to read after `sent` rows of `groups`, and how many rows of the first to skip."""
    for i, rg in enumerate(groups):
        rows = meta.row_group(rg).num_rows
        if sent < rows:
            return list(groups[i:]), sent
        sent -= rows
    return [], 0
