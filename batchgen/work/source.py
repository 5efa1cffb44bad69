"""Where a worker's units come from: a fixed share, or claims under leases (work.claim.Claimer).

The feeder asks a source for units one at a time and tells it when every row of a unit is in the
engine (`fed`); the source also says how far the feeder may read ahead. A static share reads far
ahead (nobody else wants its units); a claimer keeps the read-ahead short and hands over at each
unit's end, so a worker never sits on units another engine could take.
"""

from __future__ import annotations

from typing import Iterator, Protocol, Sequence

from batchgen.io.shards import Unit


class UnitSource(Protocol):
    read_ahead_chunks: int  # chunks of requests the feeder may hold ready
    by_unit: bool  # hand over each unit's rows when the unit ends (the next one may take a while)
    waiting: bool  # nothing to hand out now: waiting on other workers (the runner commits meanwhile)

    def units(self) -> Iterator[Unit]: ...

    def fed(self, key: str) -> None:
        """Every row of unit `key` is in the engine (or an error row)."""

    def stop(self) -> None:
        """No more units: the run is stopping."""

    def close(self) -> None:
        """After the last commit."""


class StaticShare:
    """A fixed list of units: this rank's share of a static split."""

    read_ahead_chunks = 8
    by_unit = False
    waiting = False

    def __init__(self, units: Sequence[Unit]):
        self._units = list(units)

    def units(self) -> Iterator[Unit]:
        yield from self._units

    def fed(self, key: str) -> None:
        pass

    def stop(self) -> None:
        pass

    def close(self) -> None:
        pass
