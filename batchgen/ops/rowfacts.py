"""What the committed rows say, for the report: finish reasons, error kinds with sample ids, token counts.

Read from the parts themselves, as few bytes as Parquet allows: four small columns of every part
(`finish_reason`, `error`, `prompt_tokens`, `output_tokens`: dictionary-encoded strings and int32s,
a few bytes per row), and the id column only of parts that hold error rows. The text columns, the
bulk of a part, are never read. Parts are read in parallel and folded into fixed-size aggregates as
they arrive (token counts as a count per value), so memory does not grow with the job.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchgen.io.layout import part_path
from batchgen.io.retry import with_retries
from batchgen.io.store import Store
from batchgen.ops.rowcheck import classify, message_shape

COLUMNS = ("finish_reason", "error", "prompt_tokens", "output_tokens")
SAMPLE_IDS = 5  # ids named per error kind
_READERS = 16  # parallel part reads (object stores: latency-bound)


@dataclass
class ErrorKind:
    """Error rows sharing one kind of message (numbers and quoted values do not split a kind)."""

    kind: str
    message: str  # the first such row's message, as written in its `error` column
    fix: str
    count: int = 0
    ids: list[str] = field(default_factory=list)


@dataclass
class RowFacts:
    rows: int = 0
    parts: int = 0
    finish: Counter = field(default_factory=Counter)  # finish_reason of each row's first completion; error rows apart
    errors: dict[str, ErrorKind] = field(default_factory=dict)  # by message shape
    prompt_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # rows per token count
    output_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    read_bytes: int = 0  # compressed bytes of the columns read
    seconds: float = 0.0

    @property
    def error_rows(self) -> int:
        return sum(e.count for e in self.errors.values())

    def add(self, other: RowFacts) -> None:
        self.rows += other.rows
        self.parts += other.parts
        self.read_bytes += other.read_bytes
        self.finish.update(other.finish)
        for shape, e in other.errors.items():
            mine = self.errors.setdefault(shape, ErrorKind(e.kind, e.message, e.fix))
            mine.count += e.count
            mine.ids += e.ids[:SAMPLE_IDS - len(mine.ids)]
        self.prompt_tokens = _add_counts(self.prompt_tokens, other.prompt_tokens)
        self.output_tokens = _add_counts(self.output_tokens, other.output_tokens)


def read_row_facts(store: Store, parts: Iterable[tuple[str, int]], id_column: str) -> RowFacts:
    """The facts of the given parts (unit, seq), read in parallel."""
    t0 = time.monotonic()
    facts = RowFacts()
    with ThreadPoolExecutor(_READERS) as pool:
        for one in pool.map(lambda p: _part_facts(store, part_path(*p), id_column), sorted(set(parts))):
            facts.add(one)
    facts.seconds = time.monotonic() - t0
    return facts


def _part_facts(store: Store, rel: str, id_column: str) -> RowFacts:
    def read() -> RowFacts:
        with store.fs.open(store.path(rel), "rb") as f:
            part = pq.ParquetFile(f)
            present = [c for c in COLUMNS if c in part.schema_arrow.names]
            table = part.read(columns=present, use_threads=False)
            facts = RowFacts(rows=table.num_rows, parts=1, read_bytes=_column_bytes(part, present))
            errors = table.column("error") if "error" in present else None
            failed = errors.is_valid() if errors is not None else None
            if failed is not None and pc.any(failed).as_py():
                ids = part.read(columns=[id_column], use_threads=False).column(id_column).filter(failed)
                facts.read_bytes += _column_bytes(part, [id_column])
                _note_errors(facts, errors.filter(failed).to_pylist(), ids.to_pylist())
                table = table.filter(pc.invert(failed))
            if "finish_reason" in present:
                facts.finish.update({str(k): int(v) for k, v in
                                     _value_counts(table.column("finish_reason")).items()})
            for name in ("prompt_tokens", "output_tokens"):
                if name in present:
                    values = table.column(name).to_numpy(zero_copy_only=False)
                    setattr(facts, name, np.bincount(values.astype(np.int64)) if values.size else np.zeros(0, np.int64))
            return facts

    return with_retries(store.retry, f"read {store.where(rel)}", read)


def _note_errors(facts: RowFacts, messages: list[str], ids: list[object]) -> None:
    for message, row_id in zip(messages, ids):
        kind, fix = classify(message)
        e = facts.errors.setdefault(message_shape(message), ErrorKind(kind, message, fix))
        e.count += 1
        if len(e.ids) < SAMPLE_IDS:
            e.ids.append(str(row_id))


def _value_counts(column) -> dict[str, int]:
    counts = pc.value_counts(column.drop_null())
    return {v["values"]: v["counts"] for v in counts.to_pylist()}


def _column_bytes(part: pq.ParquetFile, columns: list[str]) -> int:
    meta, total = part.metadata, 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            chunk = group.column(c)
            if chunk.path_in_schema in columns:
                total += chunk.total_compressed_size
    return total


def _add_counts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) < len(b):
        a, b = b, a
    out = a.copy()
    out[:len(b)] += b
    return out
