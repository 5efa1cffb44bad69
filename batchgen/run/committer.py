"""Commits run beside generation: a writer thread and its queue of parts; a checkpoint waits while too many queue."""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

import pyarrow as pa

from batchgen.io.layout import stats_path
from batchgen.io.parts import OutputRow, build_table, to_parquet_bytes
from batchgen.run.stats import Counters, part_stats_bytes
from batchgen.work.ledger import Ledger

log = logging.getLogger("batchgen")
# An upload running longer than this with parts queued behind it counts as "behind" in progress.
SLOW_UPLOAD_SECONDS = 5.0
# While generation is held back by a full queue, say so this often (the progress bar is frozen then).
HELD_BACK_LOG_SECONDS = 10.0


@dataclass
class PartSink:
    """How a part is encoded, and what follows its commit: everything the writer thread needs."""

    schema: pa.Schema
    id_column: str
    compression: str
    worker: str
    job_id: str  # the manifest's job this run writes as (its settings and input); each part records it
    settings: str  # the job's settings fingerprint (JobSpec.fingerprint)
    # Extra files and metrics per part (OpenAI JSONL): unit, seq, its rows, parts still queued behind it.
    on_part: Callable[[str, int, list[OutputRow], int], None] | None = None


class Committer:
    def __init__(self, ledger: Ledger, sink: PartSink, max_queue: int):
        self.ledger, self.sink = ledger, sink
        # Unbounded: `submit` holds generation back per checkpoint, not per part (see there).
        self._q: queue.Queue = queue.Queue()
        self._written = threading.Condition()  # notified after each part the writer thread is done with
        self.max_queue = max_queue
        self._busy_since: float | None = None  # start of the upload in progress
        self._error: BaseException | None = None
        self.committed = Counters()
        self.parts = 0
        self.wait_seconds = 0.0  # time generation was held back because uploads fell behind
        self.last_committed_at: float | None = None  # wall clock when the latest part was committed
        self._last_warning = float("-inf")
        self._last = time.monotonic()
        self._thread = threading.Thread(target=self._work, name="batchgen-commit", daemon=True)
        self._thread.start()

    @property
    def backlog(self) -> int:
        return self._q.qsize()

    @property
    def failed(self) -> bool:
        return self._error is not None

    @property
    def behind(self) -> bool:
        """Uploads lag generation: parts wait behind a slow (e.g. retrying) upload. (A queue at max_queue is not
        itself a lag: a checkpoint's burst of parts often reaches it; a checkpoint held back by it says so in `submit`.)"""
        busy = self._busy_since
        slow = busy is not None and time.monotonic() - busy > SLOW_UPLOAD_SECONDS
        return self.backlog > 0 and slow

    def note(self) -> str:
        """A progress suffix while uploads lag, empty otherwise."""
        if not self.behind:
            return ""
        return f", uploads behind ({self.backlog} queued, {self.ledger.store.retry.retried} storage retries)"

    def submit(self, parts: list[tuple[str, list[OutputRow]]]) -> None:
        """Queue one checkpoint's parts (one per unit with finished rows). Generation is held back first, and
        says so, while max_queue parts or more still wait from earlier checkpoints; then every part of this one
        goes in at once. A checkpoint often spans more units than max_queue (rows of several units are in flight
        together): holding it back part by part would stall generation at every checkpoint while the writer
        thread catches up with the burst (CH on an H100, session 12 of docs/benchmarks.md: 0.6 s of a 42 s run)."""
        self.raise_if_failed()
        if not parts:
            return
        t0 = time.monotonic()
        held = False
        with self._written:
            while self.backlog >= self.max_queue and self._error is None:
                held = True
                # The progress bar is frozen while we wait: a log line says why (at most every HELD_BACK_LOG_SECONDS).
                now = time.monotonic()
                if now - self._last_warning >= HELD_BACK_LOG_SECONDS:
                    self._last_warning = now
                    log.warning("uploads behind: generation waits for %d queued parts (%.0fs so far, %d storage retries)",
                                self.backlog, now - t0, self.ledger.store.retry.retried)
                self._written.wait(timeout=HELD_BACK_LOG_SECONDS)
        if held:
            self.wait_seconds += time.monotonic() - t0
        self.raise_if_failed()
        for part in parts:
            self._q.put(part)

    def close(self) -> None:
        """Wait until every submitted part is committed; re-raise a commit failure."""
        self._q.put(None)
        self._thread.join()
        self.raise_if_failed()

    def raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _work(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            if self._error is not None:
                continue  # drain: nothing more is committed after a failure
            self._busy_since = time.monotonic()
            try:
                self._commit(*item)
            except BaseException as e:  # noqa: BLE001 - handed to the main thread
                self._error = e
            finally:
                self._busy_since = None
                with self._written:
                    self._written.notify_all()

    def _commit(self, unit: str, rows: list[OutputRow]) -> None:
        s = self.sink
        t0 = time.monotonic()

        def encode(fresh: list[OutputRow], seq: int) -> bytes:
            meta = {"unit": unit, "seq": seq, "worker": s.worker, "job": s.job_id, "settings": s.settings}
            return to_parquet_bytes(build_table(s.schema, s.id_column, fresh), s.compression, meta)

        result = self.ledger.commit(unit, rows, lambda r: r.row_index, encode)
        if result is None:
            return
        seq, fresh = result
        counters = Counters()
        counters.add_rows(fresh)
        now = time.monotonic()
        stats = part_stats_bytes(unit, seq, s.worker, counters, span=now - self._last, upload=now - t0, backlog=self.backlog,
                                 job=s.job_id)
        self._last = now
        self.ledger.store.put(stats_path(unit, seq), stats)
        if s.on_part:
            s.on_part(unit, seq, fresh, self.backlog)
        self.committed = self.committed.merge(counters)
        self.parts += 1
        self.last_committed_at = time.time()
