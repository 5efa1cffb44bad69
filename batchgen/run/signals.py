"""SIGTERM/SIGINT: a stop notice with a grace period, a second notice to stop now, duplicates ignored.

A spot notice or `scancel` reaches a worker as SIGTERM; a scheduler often signals every process of
a job and a supervisor forwards the signal too, so two deliveries within SAME_NOTICE_SECONDS are
one notice. The runner and the node supervisor both install their handlers through `handling`.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import time
from typing import Callable, Iterator

log = logging.getLogger("batchgen")
# A second SIGTERM/SIGINT sooner than this after the first is a duplicate delivery, not "exit now".
SAME_NOTICE_SECONDS = 1.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

Handler = Callable[[int, object], None]


@contextlib.contextmanager
def handling(handler: Handler) -> Iterator[None]:
    """`handler` for SIGTERM and SIGINT inside the block; the previous handlers after it.

    Outside the main thread (embedded use) signals cannot be set: the caller's own handling stays.
    """
    old = {}
    for sig in STOP_SIGNALS:
        try:
            old[sig] = signal.signal(sig, handler)
        except ValueError:
            pass
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def name(signum: int) -> str:
    return signal.Signals(signum).name


class StopNotice:
    """The state of a stop: none yet, a notice with a grace deadline, or "stop now"."""

    def __init__(self, grace_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.grace, self.clock = grace_seconds, clock
        self.first_at: float | None = None
        self.hard = False

    @property
    def stopping(self) -> bool:
        return self.first_at is not None

    @property
    def deadline(self) -> float | None:
        return None if self.first_at is None else self.first_at + self.grace

    def grace_over(self) -> bool:
        return self.hard or (self.first_at is not None and self.clock() >= self.first_at + self.grace)

    def is_duplicate(self) -> bool:
        """A delivery right after the first one: the same notice."""
        return self.first_at is not None and self.clock() < self.first_at + SAME_NOTICE_SECONDS

    def handler(self, signum: int, _frame: object) -> None:
        if self.first_at is None:
            self.first_at = self.clock()
            log.warning("%s: no new rows; finishing in-flight rows for up to %.0fs, then committing. "
                        "Send it again to commit what is finished and exit at once.", name(signum), self.grace)
        elif self.is_duplicate():
            log.info("%s again within %.0fs: taken as the same stop notice", name(signum), SAME_NOTICE_SECONDS)
        else:
            self.hard = True
            log.warning("%s again: committing finished rows and exiting now", name(signum))


def die_with_parent() -> None:
    """This process gets SIGTERM if its parent dies (Linux's PR_SET_PDEATHSIG), instead of running on
    orphaned: an engine commits and exits 75 when its supervisor is gone, an MPS daemon quits."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: orphans finish their units and exit on their own
        return
