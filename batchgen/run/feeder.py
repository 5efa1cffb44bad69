"""The reader side of a run: units -> record batches -> Requests, prefix-ordered, into a bounded queue.

Runs in its own thread so reading, rendering and tokenizing overlap the engine's steps (the fast
tokenizers release the GIL while they work).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from batchgen.engine.base import Request
from batchgen.io.reader import read_unit
from batchgen.io.shards import InputFiles
from batchgen.job.spec import JobSpec
from batchgen.run.prompts import Renderer, order_by_prefix
from batchgen.work.source import UnitSource

_END = object()
FIRST_CHUNK_ROWS = 64  # then x4 per chunk up to the full look-ahead (ordering_rows)
# Rows with images hold them decoded (a 640x480 RGB image is ~0.9 MB) from here until the engine takes
# them: their look-ahead is cut to this, so the read-ahead holds a few thousand images, not 32k.
IMAGE_LOOKAHEAD_ROWS = 128


@dataclass(frozen=True)
class _UnitFed:
    """Queued after a unit's last chunk (by_unit): once taken, every row before it is in the engine."""

    key: str


class Feeder:
    def __init__(self, spec: JobSpec, source: UnitSource, done_mask: Callable[[str], np.ndarray],
                 renderer: Renderer, read_columns: Sequence[str], input_files: InputFiles):
        # The source's units may be a lazy iterator (a Claimer's): it is consumed one unit at a time, in
        # the reader thread. `source.fed(key)` runs in get()'s thread once every row of unit `key` was taken.
        self.spec, self.source, self.done_mask, self.renderer = spec, source, done_mask, renderer
        self.input = input_files
        self.by_unit = source.by_unit
        self.columns = list(read_columns)
        self._q: queue.Queue = queue.Queue(maxsize=source.read_ahead_chunks)
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.finished = False
        self._thread = threading.Thread(target=self._work, name="batchgen-read", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def get(self, timeout: float | None) -> list[Request] | None:
        """The next chunk of requests (maybe empty); None if none came within `timeout` or the input is exhausted."""
        if self.finished:
            return None
        try:
            item = self._q.get(timeout=timeout) if timeout else self._q.get_nowait()
        except queue.Empty:
            return None
        if item is _END:
            self.finished = True
            if self.error is not None:
                raise self.error
            return None
        if isinstance(item, _UnitFed):
            self.source.fed(item.key)
            return []
        return item

    def _work(self) -> None:
        try:
            buffer: list[Request] = []
            full = self.spec.runtime.ordering_rows if self.spec.runtime.order_by_prefix else self.spec.input.batch_rows
            # Ramp up: the first chunks are small (and render only what they need), so the engine's first
            # step waits for FIRST_CHUNK_ROWS rows, not for a whole look-ahead of long prompts.
            limit = min(FIRST_CHUNK_ROWS, full)
            for unit in self.source.units():
                mask = self.done_mask(unit.key)
                if mask.size and mask.all():
                    if self.by_unit:
                        self._put(_UnitFed(unit.key))
                    continue
                for batch in read_unit(self.input, unit, self.columns, mask):
                    start = 0
                    while start < batch.num_rows:
                        if self._stop.is_set():
                            return
                        whole = limit >= full and full > IMAGE_LOOKAHEAD_ROWS
                        take = batch.num_rows - start if whole else limit - len(buffer)
                        rendered = self.renderer.render(unit.key, batch.slice(start, take))
                        buffer += rendered
                        start += take
                        if full > IMAGE_LOOKAHEAD_ROWS and any(r.images for r in rendered):
                            full = limit = IMAGE_LOOKAHEAD_ROWS
                        if len(buffer) >= limit:
                            self._emit(buffer)
                            buffer = []
                            limit = min(limit * 4, full)
                if self.by_unit and not self._stop.is_set():
                    if buffer:
                        self._emit(buffer)
                        buffer = []
                    self._put(_UnitFed(unit.key))
            if buffer and not self._stop.is_set():
                self._emit(buffer)
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread by get()
            self.error = e
        finally:
            self._put(_END)

    def _emit(self, reqs: list[Request]) -> None:
        self._put(order_by_prefix(reqs) if self.spec.runtime.order_by_prefix else reqs)

    def _put(self, item: object) -> None:
        while True:
            try:
                self._q.put(item, timeout=0.2)
                return
            except queue.Full:
                if self._stop.is_set() and item is not _END:
                    return
                if self._stop.is_set():
                    # Make room for the end marker: nobody will read the queued chunks any more.
                    try:
                        self._q.get_nowait()
                    except queue.Empty:
                        pass
