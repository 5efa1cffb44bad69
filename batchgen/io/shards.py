"""The job's input: its shards, their footers and schemas, behind one handle opened once.

`InputFiles.open(spec)` builds the file system and the retry policy one time; everything that reads
the input (discovery, footers, schemas, the streaming reader) goes through that handle, so its
retries are counted in one place (`InputFiles.retry.retried`, reported in the run's summary).

A work unit (`Unit`) is a row range of one shard: whole row groups, or a piece of one large group
(work.plan cuts them).
"""

from __future__ import annotations

import glob as globlib
import posixpath
from dataclasses import dataclass
from typing import Sequence

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from batchgen.errors import InputError, StorageUnavailable
from batchgen.io import openai_batch
from batchgen.io.retry import RetryPolicy, retry_transient
from batchgen.io.store import open_fs
from batchgen.job.spec import InputSpec


@dataclass(frozen=True, order=True)
class Unit:
    key: str
    shard: str
    row_start: int
    row_end: int
    row_groups: tuple[int, ...]

    @property
    def rows(self) -> int:
        return self.row_end - self.row_start


@dataclass(frozen=True)
class ShardLayout:
    """A shard and the rows of each of its row groups (a JSONL request file: one group)."""

    shard: str
    groups_rows: tuple[int, ...]

    @property
    def rows(self) -> int:
        return sum(self.groups_rows)


class InputFiles:
    """The input named by an InputSpec, on its file system, with its retry policy."""

    def __init__(self, spec: InputSpec, fs: fsspec.AbstractFileSystem, retry: RetryPolicy):
        self.spec, self.fs, self.retry = spec, fs, retry

    @classmethod
    def open(cls, spec: InputSpec) -> InputFiles:
        fs, _ = open_fs(spec.first_url, spec.storage)
        return cls(spec, fs, RetryPolicy.from_spec(spec.storage))

    @property
    def suffix(self) -> str:
        return ".jsonl" if self.spec.format == "openai_batch" else ".parquet"

    def discover(self) -> list[str]:
        """Every input file the spec names, as fsspec paths, sorted; an error if a pattern matches none."""
        patterns = self.spec.path if isinstance(self.spec.path, list) else [self.spec.path]
        found: list[str] = []
        for pattern in patterns:
            path = self.fs._strip_protocol(pattern)  # as url_to_fs does, without building another fs
            try:
                hits = retry_transient(self.retry, f"list {pattern}", self._matches, path)
            except PermissionError as e:
                raise InputError(f"access denied listing {pattern}", where="input.path",
                                 fix="check the credentials and input.storage") from e
            except OSError as e:
                raise InputError(f"cannot list {pattern}: {e}", where="input.path") from e
            if not hits:
                raise InputError(f"no {self.suffix} files match {pattern}", where="input.path",
                                 fix="check the path; directories are searched recursively, globs like data/*.parquet work")
            found += hits
        return sorted(dict.fromkeys(found))

    def _matches(self, path: str) -> list[str]:
        fs = self.fs
        if globlib.has_magic(path):
            return [p for p in fs.glob(path) if fs.isfile(p)]
        if fs.isdir(path):
            return [p for p in fs.find(path) if p.endswith(self.suffix) and not posixpath.basename(p).startswith((".", "_"))]
        return [path] if fs.exists(path) else []

    def layout(self, shard: str) -> ShardLayout:
        """Rows per row group of a Parquet shard (from its footer); one group for a JSONL request file."""
        if self.spec.format == "openai_batch":
            try:
                with self.fs.open(shard, "rb") as f:
                    return ShardLayout(shard, (openai_batch.count_rows(f),))
            except OSError as e:
                raise InputError(f"cannot read the request file: {e}", where=shard) from e
        try:
            meta = retry_transient(self.retry, f"read the footer of {shard}", self._footer, shard)
        except StorageUnavailable:
            raise
        except Exception as e:  # noqa: BLE001 - any failure here means the file is not usable Parquet
            raise InputError(f"cannot read Parquet footer: {e}", where=shard,
                             fix="is it a Parquet file? rewrite it with pyarrow/polars") from e
        return ShardLayout(shard, tuple(meta.row_group(rg).num_rows for rg in range(meta.num_row_groups)))

    def layouts(self, shards: Sequence[str]) -> list[ShardLayout]:
        return [self.layout(s) for s in shards]

    def _footer(self, shard: str) -> pq.FileMetaData:
        with self.fs.open(shard, "rb") as f:
            return pq.ParquetFile(f).metadata

    def schema(self, shard: str) -> pa.Schema:
        if self.spec.format == "openai_batch":
            return openai_batch.request_schema(self.spec.id_column)
        return retry_transient(self.retry, f"read the schema of {shard}", self._schema, shard)

    def _schema(self, shard: str) -> pa.Schema:
        with self.fs.open(shard, "rb") as f:
            try:
                return pq.ParquetFile(f).schema_arrow
            except pa.ArrowInvalid as e:
                raise InputError(f"not a readable Parquet file: {e}", where=shard,
                                 fix="rewrite it with pyarrow or polars (write_parquet), or remove it from input.path") from e

    def check_columns(self, shard: str, needed: Sequence[str]) -> pa.Schema:
        """Fail before the engine starts if a shard lacks a column the job reads."""
        schema = self.schema(shard)
        missing = [c for c in needed if c not in schema.names]
        if missing:
            raise InputError(
                f"missing column(s) {', '.join(missing)}; the file has {', '.join(schema.names)}",
                where=shard,
                fix="rename the column in the data or point the job at it (input.id_column, prompt.*, sampling.per_row, output.passthrough_columns)",
            )
        return schema
