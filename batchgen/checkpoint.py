"""What is committed, and the exactly-once commit rule.

Layout under the output folder:

    parts/<unit>.<seq>.parquet      committed rows (the truth; a part is visible whole or not at all)
    stats/<unit>.<seq>.parquet      one stats row per part, written right after it
    _batchgen/job.json              the settings that shape outputs, checked on resume
    _SUCCESS.json                   the completion record, written once every unit is committed

Each unit's parts form a log with dense sequence numbers, created with create-if-absent. A writer
commits part `seq` only after reading parts 0..seq-1 and dropping the rows they already hold; if
`seq` was taken meanwhile (a zombie worker on the same unit), it reads that part and tries seq+1.
So even two workers on one unit leave each row exactly once.
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from batchgen.errors import BatchgenError, OutputError, StorageError, StorageUnavailable
from batchgen.io.store import Store
from batchgen.jobfile import diff_fields, fingerprint
from batchgen.plan import Plan, PlanRule, Unit, plan_job
from batchgen.spec import JobSpec

log = logging.getLogger("batchgen")
PARTS, STATS, META = "parts", "stats", "_batchgen"
SUCCESS = "_SUCCESS.json"
# Unit keys never start with "." or "_": those are a killed writer's temp files and foreign markers.
_PART = re.compile(r"^(?P<unit>[^._].*)\.(?P<seq>\d{6})\.parquet$")


def part_name(unit: str, seq: int) -> str:
    return f"{unit}.{seq:06d}.parquet"


def parse_part(name: str) -> tuple[str, int] | None:
    m = _PART.match(name)
    return (m["unit"], int(m["seq"])) if m else None


def recorded_plan(store: Store) -> PlanRule | None:
    """The rule the job's first run cut its units with (None: no run yet). Manifests older than recorded
    plans were cut with the old fixed default."""
    rel = f"{META}/job.json"
    try:
        old = json.loads(store.read_bytes(rel)) if store.exists(rel) else None
    except FileNotFoundError:
        return None
    except StorageError as e:
        if isinstance(e, StorageUnavailable):
            raise
        raise OutputError(e.message, where=e.where, fix=e.fix) from e
    if old is None:
        return None
    return PlanRule.from_record(old.get("plan"))


def planned_units(spec: JobSpec, shards: list[str]) -> tuple[Plan, str]:
    """The job's units as its runs cut them (with the recorded unit size once the output has one), and
    where their size came from."""
    try:
        recorded = recorded_plan(Store.open(spec.output.path, spec.output.storage))
    except BatchgenError:  # no readable output yet: the plan a first run would make
        recorded = None
    plan = plan_job(spec.input, shards, recorded)
    if recorded is not None:
        source = "recorded in _batchgen/job.json by the job's first run"
    else:
        source = "input.unit_rows" if spec.input.unit_rows is not None else "automatic: about 1/128 of the input's rows"
    return plan, source


def check_job_manifest(store: Store, spec: JobSpec, force: bool, rule: PlanRule) -> None:
    """Refuse to resume into output written with settings that change results, unless forced; record
    `rule`, how the units were cut (on a resume, the recorded one: recorded_plan).

    Also the job's first write: a missing bucket or denied access fails here, before the engine starts,
    as a bad job (exit 2). A store that is only unreachable stays StorageUnavailable (exit 75, rerun).
    """
    try:
        _check_job_manifest(store, spec, force, rule)
    except StorageUnavailable:
        raise
    except StorageError as e:
        raise OutputError(e.message, where=e.where, fix=e.fix) from e


def _check_job_manifest(store: Store, spec: JobSpec, force: bool, rule: PlanRule) -> None:
    digest, fields = fingerprint(spec)
    rel = f"{META}/job.json"
    try:
        old = json.loads(store.read_bytes(rel)) if store.exists(rel) else None
    except FileNotFoundError:
        old = None
    if old is not None and old.get("fingerprint") != digest and not force:
        diffs = diff_fields(old.get("fields", {}), fields)
        raise OutputError(
            "the output folder holds results of a job with different settings:\n    " + "\n    ".join(diffs or ["(unknown)"]),
            where=store.where(rel),
            fix="use another output.path, or pass --force to resume anyway (old and new rows will be mixed)",
        )
    if old is None or old.get("fingerprint") != digest:
        record = {"fingerprint": digest, "fields": fields, "written": time.time(), "plan": rule.as_record()}
        store.put(rel, json.dumps(record, indent=1).encode())


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

    def load(self) -> None:
        """Read every committed part of our units (one listing; foreign files are ignored)."""
        by_unit: dict[str, list[int]] = {}
        for name in self.store.listdir(PARTS):
            parsed = parse_part(name)
            if parsed and parsed[0] in self.units:
                by_unit.setdefault(parsed[0], []).append(parsed[1])
        for key, seqs in by_unit.items():
            for seq in sorted(seqs):
                self._absorb(key, seq)

    def _absorb(self, key: str, seq: int) -> bytes:
        state = self.units[key]
        data = self.store.read_bytes(f"{PARTS}/{part_name(key, seq)}")
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
            if self.store.create_exclusive(f"{PARTS}/{part_name(key, seq)}", payload):
                with self.lock:
                    state.done[[row_index(r) - state.unit.row_start for r in fresh]] = True
                    state.next_seq = seq + 1
                return seq, fresh
            if self._absorb(key, seq) == payload:
                # Our own earlier attempt landed but its response was lost, and the retried PUT got 412.
                return seq, fresh
            log.warning("part %s of unit %s was written by another worker; merging and retrying", seq, key)


def read_parts(store: Store, columns: list[str] | None = None) -> pa.Table | None:
    """All committed rows (for tests, status and the completion check)."""
    tables = []
    for name in store.listdir(PARTS):
        if parse_part(name):
            tables.append(pq.read_table(io.BytesIO(store.read_bytes(f"{PARTS}/{name}")), columns=columns, use_threads=False))
    return pa.concat_tables(tables, promote_options="permissive") if tables else None
