"""The job's input: its shards, their footers and schemas, behind one handle opened once.

`InputFiles.open(spec)` builds the file system and the retry policy one time; everything that reads
the input (discovery, footers, schemas, the streaming reader) goes through that handle, so its
retries are counted in one place (`InputFiles.retry.retried`, reported in the run's summary).

A work unit (`Unit`) is a row range of one shard: whole row groups, or a piece of one large group
(work.plan cuts them). Reading a shard's footer also notes its identity (`ShardIdentity`: size, rows,
a hash of the footer, the store's ETag / version id), which the job's manifest records at the first
run so that a resume into changed input is refused instead of skipping the new rows.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import io
import os
import posixpath
from dataclasses import dataclass
from typing import Any, Sequence

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from batchgen.errors import InputError, StorageUnavailable
from batchgen.io import openai_batch
from batchgen.io.input_schema import check_id_type, common_schema
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


@dataclass(frozen=True)
class ShardIdentity:
    """What a shard was when the job first read it: enough to notice other content under the same name."""

    url: str
    size: int | None
    rows: int
    footer: str  # sha256 of the Parquet footer (row groups, offsets, statistics); of the whole file for JSONL
    etag: str | None = None  # object stores: the object's ETag and version id, where the store gives them
    version_id: str | None = None

    def as_record(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ShardIdentity:
        return cls(**{k: record.get(k) for k in ("url", "size", "rows", "footer", "etag", "version_id")})

    def changes(self, old: ShardIdentity) -> list[str]:
        """What differs from `old`, for people ("rows 40 -> 257"). ETag and version id only compare at the same
        URL: the same bytes copied elsewhere (local -> S3, another bucket) are the same shard."""
        out = [f"{name} {a} -> {b}" for name, a, b in (("rows", old.rows, self.rows), ("size", old.size, self.size))
               if a is not None and b is not None and a != b]
        if old.footer and self.footer and old.footer != self.footer:
            out.append("Parquet footer (row groups, statistics) differs")
        if self.url == old.url:
            for name, a, b in (("ETag", old.etag, self.etag), ("version id", old.version_id, self.version_id)):
                if a and b and a != b:
                    out.append(f"{name} {a} -> {b} (rewritten in place)")
        return out


class InputFiles:
    """The input named by an InputSpec, on its file system, with its retry policy."""

    def __init__(self, spec: InputSpec, fs: fsspec.AbstractFileSystem, retry: RetryPolicy):
        self.spec, self.fs, self.retry = spec, fs, retry
        self.identities: dict[str, ShardIdentity] = {}  # noted by layout(), one footer read per shard

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
            except StorageUnavailable as e:  # the input's first request: a store never reached is misconfigured
                at = self.spec.storage.endpoint_url or "the default AWS S3 endpoint"
                raise InputError(f"the input store at {at} never answered: {e.message}", where="input.storage.endpoint_url",
                                 fix="check input.storage.endpoint_url (a typo?), input.storage.region and the network") from e
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
        """Files a path names: a glob's hits (a folder among them, e.g. Spark's `x.parquet/`, searched like a
        folder), a folder's files searched recursively, or the file itself. A FIFO, socket or device is refused:
        opening one would block or read something that is not a shard."""
        fs = self.fs
        if globlib.has_magic(path):
            hits = fs.glob(path, detail=True)
            return sorted(p for name, info in hits.items() for p in self._entry(name, info))
        if not fs.exists(path):
            return []
        return self._entry(path, fs.info(path))

    def _entry(self, path: str, info: dict) -> list[str]:
        kind = info.get("type")
        if kind == "directory":
            found = self.fs.find(path, detail=True)
            return [p for p, i in found.items() if p.endswith(self.suffix) and not posixpath.basename(p).startswith((".", "_"))
                    and self._regular(p, i)]
        return [path] if self._regular(path, info) else []

    @staticmethod
    def _regular(path: str, info: dict) -> bool:
        if info.get("type") not in ("file", "directory"):
            raise InputError("not a regular file (a FIFO, socket or device): it cannot be read as a shard", where=path,
                             fix="point input.path at Parquet files, or move this entry out of the input folder")
        return info.get("type") == "file"

    def layout(self, shard: str) -> ShardLayout:
        """Rows per row group of a Parquet shard (from its footer); one group for a JSONL request file.
        Notes the shard's identity in `identities` on the way (the same read)."""
        if self.spec.format == "openai_batch":
            try:
                with self.fs.open(shard, "rb") as f:
                    data = f.read()
                    rows = openai_batch.count_rows(io.BytesIO(data))
                    self.identities[shard] = self._identity(shard, f, rows, hashlib.sha256(data).hexdigest())
                    return ShardLayout(shard, (rows,))
            except OSError as e:
                raise InputError(f"cannot read the request file: {e}", where=shard) from e
        try:
            meta = retry_transient(self.retry, f"read the footer of {shard}", self._footer, shard)
        except StorageUnavailable:
            raise
        except PermissionError as e:
            raise _unreadable(shard, e) from e
        except Exception as e:  # noqa: BLE001 - any failure here means the file is not usable Parquet
            raise InputError(f"cannot read Parquet footer: {e}", where=shard,
                             fix="is it a Parquet file? rewrite it with pyarrow/polars") from e
        return ShardLayout(shard, tuple(meta.row_group(rg).num_rows for rg in range(meta.num_row_groups)))

    def layouts(self, shards: Sequence[str]) -> list[ShardLayout]:
        return [self.layout(s) for s in shards]

    def _footer(self, shard: str) -> pq.FileMetaData:
        with self.fs.open(shard, "rb") as f:
            meta = pq.ParquetFile(f).metadata  # checks the file (magic bytes, footer) first
            f.seek(-8 - meta.serialized_size, os.SEEK_END)  # the footer, before its length and the magic "PAR1"
            footer = hashlib.sha256(f.read(meta.serialized_size)).hexdigest()
            self.identities[shard] = self._identity(shard, f, meta.num_rows, footer)
            return meta

    def _identity(self, shard: str, f: Any, rows: int, digest: str) -> ShardIdentity:
        try:  # a fresh HEAD on object stores: a listing's cached entry has no version id
            info = self.fs.info(shard, refresh=True)
        except TypeError:  # a file system without `refresh`
            info = getattr(f, "details", None) or self.fs.info(shard)
        return ShardIdentity(url=self.fs.unstrip_protocol(shard), size=info.get("size"), rows=rows, footer=digest,
                             etag=(info.get("ETag") or "").strip('"') or None, version_id=info.get("VersionId") or None)

    def schema(self, shard: str) -> pa.Schema:
        if self.spec.format == "openai_batch":
            return openai_batch.request_schema(self.spec.id_column)
        return retry_transient(self.retry, f"read the schema of {shard}", self._schema, shard)

    def _schema(self, shard: str) -> pa.Schema:
        try:
            with self.fs.open(shard, "rb") as f:
                return pq.ParquetFile(f).schema_arrow
        except pa.ArrowInvalid as e:
            raise InputError(f"not a readable Parquet file: {e}", where=shard,
                             fix="rewrite it with pyarrow or polars (write_parquet), or remove it from input.path") from e
        except PermissionError as e:
            raise _unreadable(shard, e) from e
        except IsADirectoryError as e:
            raise InputError("a folder, not a file", where=shard, fix="point input.path at the Parquet files inside it") from e

    def check_columns(self, shard: str, needed: Sequence[str]) -> pa.Schema:
        """Fail before the engine starts if a shard lacks a column the job reads, or its ids are not text or integers."""
        schema = self.schema(shard)
        missing = [c for c in needed if c not in schema.names]
        if missing:
            raise InputError(
                f"missing column(s) {', '.join(missing)}; the file has {', '.join(schema.names)}",
                where=shard,
                fix="rename the column in the data or point the job at it (input.id_column, prompt.*, sampling.per_row, output.passthrough_columns)",
            )
        check_id_type(schema.field(self.spec.id_column), shard)
        return schema

    def check_schemas(self, shards: Sequence[str], needed: Sequence[str], free: Sequence[str] = ()) -> pa.Schema:
        """Every shard's columns (check_columns), then one schema for the columns the job reads: a column whose
        type differs between shards (text in one, numbers in another) fails here, naming both shards, unless
        it is one of the `free` columns (input_schema.common_schema)."""
        return common_schema({shard: self.check_columns(shard, needed) for shard in shards}, needed, self.spec.id_column,
                             free)


def _unreadable(shard: str, e: OSError) -> InputError:
    return InputError(f"cannot read the file: {e.strerror or 'permission denied'}", where=shard,
                      fix="give the user running batchgen read access (file permissions, or the store's credentials in input.storage)")


def common_root(shards: Sequence[str]) -> str:
    """The folder every shard lies under (a single shard: its folder). Unit keys and the manifest's shard
    names are paths relative to it."""
    if len(shards) == 1:
        return posixpath.dirname(shards[0])
    return posixpath.commonpath(shards) if all(s.startswith("/") for s in shards) else os.path.commonpath(shards)
