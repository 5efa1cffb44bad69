"""What is committed, and the exactly-once commit rule.

Each unit's parts form a log with dense sequence numbers, created with create-if-absent. A writer
commits part `seq` only after reading parts 0..seq-1 and dropping the rows they already hold; if
`seq` was taken meanwhile (a zombie worker on the same unit), it reads that part and tries seq+1.
So even two workers on one unit leave each row exactly once. (The folder's names: io.layout.)
"""

from __future__ import annotations

import io
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import pyarrow.parquet as pq

from batchgen.io.layout import PARTS, parse_part, part_path
from batchgen.io.shards import Unit
from batchgen.io.store import Store

log = logging.getLogger("batchgen")


@dataclass
class UnitState:
    unit: Unit
    done: np.ndarray  # bool per row of the unit: committed
    next_seq: int = 0

    @property
    def remaining(self) -> int:
        return int((~self.done).sum())


class Ledger:
    """Committed state of a set of units, and the commit operation. Safe to call from one writer thread."""

    def __init__(self, store: Store, units: Iterable[Unit]):
        self.store = store
        self.units = {u.key: UnitState(u, np.zeros(max(u.rows, 0), dtype=bool)) for u in units}
        self.lock = threading.Lock()
        self.loaded: list[tuple[str, int]] = []  # (unit, seq) of the parts the last load() read

    def load(self) -> None:
        """Read every committed part of our units (one listing; foreign files are ignored)."""
        by_unit: dict[str, list[int]] = {}
        for unit, seq in committed_parts(self.store):
            if unit in self.units:
                by_unit.setdefault(unit, []).append(seq)
        for key, seqs in by_unit.items():
            for seq in sorted(seqs):
                self._absorb(key, seq)
        self.loaded = sorted((key, seq) for key, seqs in by_unit.items() for seq in seqs)

    def _absorb(self, key: str, seq: int) -> bytes:
        state = self.units[key]
        data = self.store.read_bytes(part_path(key, seq))
        rows = pq.read_table(io.BytesIO(data), columns=["row_index"], use_threads=False).column(0).to_numpy()
        with self.lock:
            state.done[rows - state.unit.row_start] = True
            state.next_seq = max(state.next_seq, seq + 1)
        return data

    def refresh(self, key: str) -> None:
        """Absorb parts of `key` committed by other workers since we looked (a unit taken over).

        Sequence numbers are dense, so probing next_seq, next_seq + 1, ... finds every new part with
        one read each, without listing the whole parts folder.
        """
        while True:
            try:
                self._absorb(key, self.units[key].next_seq)
            except FileNotFoundError:
                return

    def done_mask(self, key: str) -> np.ndarray:
        with self.lock:
            return self.units[key].done.copy()

    def remaining(self) -> int:
        return sum(s.remaining for s in self.units.values())

    def complete(self) -> bool:
        return all(s.remaining == 0 for s in self.units.values())

    def commit(self, key: str, rows: list[Any], row_index: Callable[[Any], int],
               encode: Callable[[list[Any], int], bytes]) -> tuple[int, list[Any]] | None:
        """Commit `rows` of unit `key` exactly once. Returns (seq, rows written) or None if all were there."""
        state = self.units[key]
        while True:
            with self.lock:
                seq = state.next_seq
                fresh = [r for r in rows if not state.done[row_index(r) - state.unit.row_start]]
            if not fresh:
                return None
            payload = encode(fresh, seq)
            if self.store.create_exclusive(part_path(key, seq), payload):
                with self.lock:
                    state.done[[row_index(r) - state.unit.row_start for r in fresh]] = True
                    state.next_seq = seq + 1
                return seq, fresh
            if self._absorb(key, seq) == payload:
                # Our own earlier attempt landed but its response was lost, and the retried PUT got 412.
                return seq, fresh
            log.warning("part %s of unit %s was written by another worker; merging and retrying", seq, key)


def committed_parts(store: Store) -> set[tuple[str, int]]:
    """(unit, seq) of every committed part, from one listing (temp and foreign files are not parts)."""
    return {p for p in map(parse_part, store.listdir(PARTS)) if p}
