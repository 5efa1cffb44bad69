"""The writer thread's queue: generation is held back per checkpoint, while earlier parts still wait, never
inside one checkpoint's burst of parts (a real local store and ledger; the store's part writes held at a gate)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from batchgen.io.parts import OutputRow, output_schema
from batchgen.io.shards import Unit
from batchgen.io.store import Store
from batchgen.job.load import validate
from batchgen.job.spec import StorageSpec
from batchgen.run.committer import Committer, PartSink
from batchgen.work.ledger import Ledger
from tests.conftest import job_dict

UNITS = 6
ROWS = 4  # rows of each unit in a checkpoint


class GatedStore(Store):
    """A local store whose part writes wait for `gate`: the writer thread falls behind on demand."""

    gate: threading.Event

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        if rel.startswith("parts/"):
            self.gate.wait(timeout=30)
        return super().create_exclusive(rel, data)


def _committer(tmp_path: Path, max_queue: int) -> tuple[Committer, threading.Event]:
    base = Store.open(str(tmp_path / "out"), StorageSpec())
    store = GatedStore(**vars(base))
    store.gate = threading.Event()
    units = [Unit(f"u{i}@0", f"u{i}", 0, 2 * ROWS, (0,)) for i in range(UNITS)]
    spec = validate(job_dict(tmp_path / "model", tmp_path / "in", tmp_path / "out"))
    schema = output_schema(spec, pa.schema([("id", pa.string()), ("text", pa.string())]))
    sink = PartSink(schema=schema, id_column="id", compression="zstd", worker="w0", job_id="j", settings="s")
    return Committer(Ledger(store, units), sink, max_queue=max_queue), store.gate


def _checkpoint(half: int) -> list[tuple[str, list[OutputRow]]]:
    """One part per unit: rows half*ROWS .. half*ROWS + ROWS - 1 of each."""
    return [(f"u{i}@0", [OutputRow(id=f"u{i}-{r}", row_index=r, seed=0, texts=["t"], finish_reasons=["stop"],
                                   output_tokens=[1]) for r in range(half * ROWS, (half + 1) * ROWS)])
            for i in range(UNITS)]


def test_a_checkpoint_of_more_parts_than_the_queue_goes_in_at_once(tmp_path, caplog):
    """Six units' parts against upload_queue 2: the first checkpoint is not held back though the writer is
    stuck; the second waits (and says so) until fewer than 2 parts are queued; every row lands once."""
    committer, gate = _committer(tmp_path, max_queue=2)
    caplog.set_level(logging.WARNING, logger="batchgen")
    t0 = time.monotonic()
    committer.submit(_checkpoint(0))
    assert time.monotonic() - t0 < 1.0 and committer.wait_seconds == 0
    assert committer.backlog >= UNITS - 1  # the writer holds at most one of them, at the gate

    second = threading.Thread(target=committer.submit, args=(_checkpoint(1),))
    second.start()
    second.join(timeout=1.0)
    assert second.is_alive(), "the second checkpoint went in while earlier parts still waited"
    assert "uploads behind: generation waits for" in caplog.text
    gate.set()
    second.join(timeout=30)
    assert not second.is_alive()
    committer.close()
    assert committer.wait_seconds >= 0.9  # from its start to the gate opening, at least the 1 s join above
    assert committer.parts == 2 * UNITS and committer.committed.rows == 2 * UNITS * ROWS

    ids = pq.read_table(tmp_path / "out" / "parts").column("id").to_pylist()
    assert sorted(ids) == sorted(f"u{i}-{r}" for i in range(UNITS) for r in range(2 * ROWS))
