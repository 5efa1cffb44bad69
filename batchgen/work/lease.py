"""Work-unit leases: who is working on which unit, for workers that claim units instead of a fixed split.

Leases are small JSON objects next to the output, one per (unit, generation):

    _batchgen/leases/<unit>.<gen>.json   {"owner", "token", "expires_at", "state": "held"|"done"|"released"}

The highest generation of a unit is its current lease. Claiming creates the next generation with
create-if-absent (exclusive create locally, a conditional PUT on S3), so when several workers see
the same expired lease, exactly one of them wins that generation. Only the owner rewrites its own
generation (renewal is a plain PUT); nobody deletes a generation, so "generation g+1 exists" is a
reliable sign that the holder of g lost the unit.

A lease is an optimisation, not the safety net: a worker that lost its lease without noticing (a
zombie) keeps generating, and the Ledger's commit protocol still leaves each row exactly once. So
clocks only need to agree to well within `lease_seconds`: skew costs duplicate work, never rows.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, replace
from enum import Enum
from typing import Callable, Literal

from batchgen.io.layout import LEASES, lease_path, parse_lease
from batchgen.io.store import Store

log = logging.getLogger("batchgen")

State = Literal["held", "done", "released"]


@dataclass(frozen=True)
class Lease:
    unit: str
    gen: int
    owner: str
    token: str  # tells two incarnations of one worker id apart
    expires_at: float  # wall-clock seconds: leases are compared across machines
    state: State = "held"

    def live(self, now: float) -> bool:
        """Held and not expired: nobody else may take the unit."""
        return self.state == "held" and now < self.expires_at

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Lease:
        return cls(**json.loads(data))


class Claim(Enum):
    """What `LeaseBook.try_claim` found."""

    WON = "won"  # the lease is ours now
    BUSY = "busy"  # another worker holds a live lease: try later
    DONE = "done"  # the unit was finished under a lease: skip it


class LeaseBook:
    """The lease operations of one worker (`owner`) on one output store. No threads, no state but the clock."""

    def __init__(self, store: Store, owner: str, seconds: float, clock: Callable[[], float] = time.time):
        self.store, self.owner, self.seconds, self.clock = store, owner, seconds, clock
        self.token = uuid.uuid4().hex

    def generations(self) -> dict[str, int]:
        """unit -> its current (highest) lease generation, from one listing."""
        current: dict[str, int] = {}
        for name in self.store.listdir(LEASES):
            parsed = parse_lease(name)
            if parsed:
                current[parsed[0]] = max(current.get(parsed[0], -1), parsed[1])
        return current

    def read(self, unit: str, gen: int) -> Lease | None:
        try:
            return Lease.from_bytes(self.store.read_bytes(lease_path(unit, gen)))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as e:  # a torn or foreign file: treat it as expired, say so
            log.warning("unreadable lease %s (%s); treating it as expired", self.store.where(lease_path(unit, gen)), e)
            return None

    def try_claim(self, unit: str, current_gen: int | None) -> tuple[Claim, Lease | None]:
        """Take `unit` if it has no live lease of another worker. `current_gen` comes from `generations()`."""
        if current_gen is not None:
            old = self.read(unit, current_gen)
            if old is not None:
                if old.state == "done":
                    return Claim.DONE, old
                # Our own worker id on a live lease is an earlier incarnation of us (a restart): take it back now.
                if old.live(self.clock()) and old.owner != self.owner:
                    return Claim.BUSY, old
                if old.state == "held":
                    log.info("unit %s: taking over the lease of %s (%s)", unit, old.owner,
                             "our earlier run" if old.owner == self.owner else "expired")
        lease = Lease(unit=unit, gen=0 if current_gen is None else current_gen + 1, owner=self.owner,
                      token=self.token, expires_at=self.clock() + self.seconds)
        if self.store.create_exclusive(lease_path(unit, lease.gen), lease.to_bytes()):
            return Claim.WON, lease
        return Claim.BUSY, None  # another worker won this generation a moment ago

    def lost(self, lease: Lease) -> bool:
        """True if a later generation exists: someone took the unit over from us."""
        try:
            self.store.read_bytes(lease_path(lease.unit, lease.gen + 1))
        except FileNotFoundError:
            return False
        return True

    def renew(self, lease: Lease) -> Lease | None:
        """Extend our lease; None if it was taken over (we are a zombie on that unit from now on)."""
        if self.lost(lease):
            return None
        renewed = replace(lease, expires_at=self.clock() + self.seconds)
        self.store.put(lease_path(lease.unit, lease.gen), renewed.to_bytes())
        return renewed

    def finish(self, lease: Lease, state: State) -> None:
        """Mark our lease done (every row of the unit committed) or released (we stop; take it at once)."""
        if state == "released" and self.lost(lease):
            return
        self.store.put(lease_path(lease.unit, lease.gen), replace(lease, state=state).to_bytes())

    def release_owner(self, owner: str) -> list[str]:
        """Release every live lease of `owner`, a worker known to be dead (its supervisor saw it exit)."""
        released = []
        for unit, gen in self.generations().items():
            lease = self.read(unit, gen)
            if lease is not None and lease.owner == owner and lease.state == "held":
                self.store.put(lease_path(unit, gen), replace(lease, state="released").to_bytes())
                released.append(unit)
        return released
