"""Dynamic work: a worker takes units one at a time under leases, instead of a fixed share.

Used by elastic workers (`runtime.elastic: true`, a fleet of changing size) and by the engines of
one node (they share the node's units, so a slow engine does not hold the node back). The feeder
iterates `Claimer.units()`; a heartbeat thread renews the leases of units being worked on, marks
them done once the Ledger says every row is committed, and `close()` releases the rest so another
worker can take them at once instead of waiting for them to expire.

A worker stays until every unit is done: when all remaining units are leased by live workers it
waits, and takes over any whose lease expires (its holder died). So an elastic worker that exits 0
leaves a complete job behind.
"""

from __future__ import annotations

import logging
import threading
import zlib
from typing import Iterator, Sequence

from batchgen.errors import BatchgenError
from batchgen.io.shards import Unit
from batchgen.work.lease import Claim, Lease, LeaseBook
from batchgen.work.ledger import Ledger

log = logging.getLogger("batchgen")


class Claimer:
    """A UnitSource (work.source) of units claimed under leases."""

    # The feeder claims units as it reads them: a short queue and a hand-over at each unit's end keep a
    # worker from claiming far ahead of its engine (and from sitting on rows while it waits for a unit).
    read_ahead_chunks = 2
    by_unit = True

    def __init__(self, book: LeaseBook, ledger: Ledger, units: Sequence[Unit], tick_seconds: float = 0.5,
                 max_open: int = 2):
        self.book, self.ledger = book, ledger
        # Units claimed whose rows are not all in the engine yet: the one being fed and the one read ahead.
        # More would let a fast reader hoard units that an idle engine elsewhere could take; counting units
        # that only wait for their commit would make the engine drain its window before each claim.
        self.max_open = max_open
        self._open: set[str] = set()
        # Start each worker at a different unit, so workers starting together rarely race for one lease.
        order = sorted(units)
        shift = zlib.crc32(book.owner.encode()) % len(order) if order else 0
        self.order = order[shift:] + order[:shift]
        self.tick = tick_seconds
        self.poll = min(2.0, book.seconds / 4)
        self.claimed = 0
        self.waiting = False  # nothing to claim now, waiting on other workers' leases
        self._held: dict[str, Lease] = {}
        self._taken: set[str] = set()  # units handed to the feeder this run (ours, even once done)
        self._settled: set[str] = set()  # units known to be finished
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._closed = False
        self._heartbeat = threading.Thread(target=self._beat, name="batchgen-lease", daemon=True)
        self._heartbeat.start()

    # -- the feeder's side -----------------------------------------------------------------------
    def units(self) -> Iterator[Unit]:
        """Units claimed for this worker, one at a time, until every unit is done or taken by us."""
        while not self._stop.is_set():
            self._settle_done()
            if len(self._open) >= self.max_open:
                if not any(u.key not in self._taken and u.key not in self._settled for u in self.order):
                    break  # nothing left that we could claim
                self.waiting = True  # a slot frees when the runner has handed a unit's last row to the engine
                self._stop.wait(self.tick / 5)
                continue
            unit, others_busy = self._claim_next()
            if unit is not None:
                self.waiting = False
                yield unit
            elif not others_busy:
                self.waiting = False
                return
            else:
                self.waiting = True
                self._stop.wait(self.poll)
        self.waiting = False

    def _claim_next(self) -> tuple[Unit | None, bool]:
        generations = self.book.generations()
        others_busy = False
        for unit in self.order:
            key = unit.key
            if self._stop.is_set():
                break
            if key in self._taken or key in self._settled:
                continue
            if self.ledger.units[key].remaining == 0:
                self._settled.add(key)
                continue
            result, lease = self.book.try_claim(key, generations.get(key))
            if result is Claim.DONE:
                self._settled.add(key)
            elif result is Claim.BUSY:
                others_busy = True
            elif lease is not None and self._keep(unit, lease):
                return unit, others_busy
        return None, others_busy

    def _keep(self, unit: Unit, lease: Lease) -> bool:
        # Rows the previous holder committed are not generated again.
        self.ledger.refresh(unit.key)
        if self.ledger.units[unit.key].remaining == 0:
            self.book.finish(lease, "done")
            self._settled.add(unit.key)
            return False
        with self._lock:
            if self._closed:  # close() ran while we were claiming: give it straight back
                self.book.finish(lease, "released")
                return False
            self._held[unit.key] = lease
            self._open.add(unit.key)
            self._taken.add(unit.key)
        self.claimed += 1
        log.info("claimed unit %s (lease generation %d)", unit.key, lease.gen)
        return True

    def fed(self, key: str) -> None:
        """Every row of `key` is in the engine (or an error row): the next unit may be claimed."""
        with self._lock:
            self._open.discard(key)

    # -- the heartbeat ---------------------------------------------------------------------------
    def _beat(self) -> None:
        renew_every = self.book.seconds / 3
        since_renewal = 0.0
        while not self._stop.wait(self.tick):
            since_renewal += self.tick
            try:
                self._settle_done()
                if since_renewal >= renew_every:
                    since_renewal = 0.0
                    self._renew_all()
            except Exception as e:  # noqa: BLE001 - a failed renewal must not kill the run; the ledger keeps rows safe
                log.warning("lease heartbeat failed (%s); retrying", e)

    def _settle_done(self) -> None:
        with self._lock:
            finished = [lease for key, lease in self._held.items() if self.ledger.units[key].remaining == 0]
            for lease in finished:
                del self._held[lease.unit]
                self._open.discard(lease.unit)
        for lease in finished:
            self.book.finish(lease, "done")
            self._settled.add(lease.unit)

    def _renew_all(self) -> None:
        with self._lock:
            held = list(self._held.values())
        for lease in held:
            renewed = self.book.renew(lease)
            with self._lock:
                if lease.unit not in self._held:
                    continue
                if renewed is None:
                    log.warning("lost the lease of unit %s to another worker; finishing the rows in hand "
                                "(commits stay exactly once)", lease.unit)
                    del self._held[lease.unit]
                else:
                    self._held[lease.unit] = renewed

    # -- the end ---------------------------------------------------------------------------------
    def stop(self) -> None:
        """No more claims (the run is stopping); the feeder's wait ends at once."""
        self._stop.set()

    def close(self) -> None:
        """After the last commit: mark finished units done and release the others."""
        self._stop.set()
        self._heartbeat.join()
        with self._lock:
            self._closed = True
            held, self._held = list(self._held.values()), {}
        for lease in held:
            done = self.ledger.units[lease.unit].remaining == 0
            try:
                self.book.finish(lease, "done" if done else "released")
            except (BatchgenError, OSError) as e:  # the store is failing: the lease just expires instead
                log.warning("could not release the lease of unit %s (%s); it expires in %.0fs",
                            lease.unit, e, self.book.seconds)
