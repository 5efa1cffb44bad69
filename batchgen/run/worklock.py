"""A worker's local lock on this host, and the record of its engine processes beside it.

    <state_dir>/locks/<hash of the output>-<worker>.lock   held by the run (a POSIX record lock)
    <state_dir>/locks/<hash of the output>-<worker>.json   the engine processes of that run (run.watchdog)

A run that takes the lock knows that the run which held it before is gone. Processes its record still
names that are alive (same pid *and* start time) outlived it and its watchdog: they are ended before
this run starts its engine, and the log says so. A lock held by a live run (the same worker started
twice on one host) leaves that run and its processes alone. POSIX record locks belong to a process and
are not inherited by fork, so a forked EngineCore that outlives its run does not keep the lock held.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from batchgen.run.watchdog import Watchdog, end_processes, read_record

log = logging.getLogger("batchgen")


def worker_files(state_dir: Path, output: str, worker: str) -> tuple[Path, Path]:
    """(lock, record) of `worker` writing into `output` (a URL, or an absolute local path)."""
    stem = f"{hashlib.sha256(output.encode()).hexdigest()[:16]}-{re.sub(r'[^A-Za-z0-9._-]', '_', worker)}"
    folder = state_dir / "locks"
    return folder / f"{stem}.lock", folder / f"{stem}.json"


@dataclass
class WorkerLock:
    """What a run holds: the lock (if it got it) and, once the engine starts, its watchdog."""

    guard: bool  # start a watchdog with the engine (off for library use without a state folder)
    fd: int | None = None
    record: Path | None = None
    watchdog: Watchdog | None = None

    @classmethod
    def take(cls, state_dir: Path | None, output: str, worker: str) -> WorkerLock:
        """Lock `worker` for `output` on this host and end what an earlier run of it left running."""
        if state_dir is None:
            return cls(guard=False)
        lock_path, record = worker_files(state_dir, output, worker)
        try:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            log.warning("no local lock for worker %s (%s): processes of its earlier runs are not looked for; "
                        "set --state-dir to a writable folder", worker, e)
            return cls(guard=True)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            log.warning("worker %s already runs on this host (pid %s, lock %s): its engine processes are left alone",
                        worker, holder, lock_path)
            return cls(guard=True)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        ended = end_processes(read_record(record))
        if ended:
            log.warning("ended %d process(es) that an earlier run of worker %s left running (%s), before starting "
                        "the engine: %s", len(ended), worker, record,
                        ", ".join(f"pid {p.pid} ({p.cmd[:60]})" for p in ended))
        return cls(guard=True, fd=fd, record=record)

    def watch(self) -> None:
        """Right before the engine starts: its processes die with this one (the record only if we hold the lock)."""
        if self.guard and self.watchdog is None:
            self.watchdog = Watchdog.start(self.record if self.fd is not None else None)

    def release(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
            self.watchdog = None
        if self.fd is not None:
            if self.record is not None:
                self.record.unlink(missing_ok=True)
            os.close(self.fd)  # releases the lock
            self.fd = None
