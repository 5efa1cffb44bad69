"""A watchdog process that ends the engine's processes once the run's process is gone, however it went.

vLLM's multiprocess engine (the default) starts an EngineCore process (not a daemon; forked on GPU,
spawned on the CPU build, with worker processes of its own), and nothing in vLLM notices the
frontend's death: after a `kill -9` of `batchgen run` the EngineCore runs on and keeps the GPU's memory.

Why a watchdog and not PR_SET_PDEATHSIG in those processes: vLLM starts them itself, and a spawned
one is a fork+exec that runs none of our code before exec (no place to call prctl), while a death
signal follows the *thread* that forked, not the process. So a small process of our own (this module,
`python -m batchgen.run.watchdog`, stdlib and psutil only: it starts in a few tens of ms) is started
before the engine. It notes the run's new descendants (pid and start time, so a recycled pid is never
taken for one) every fraction of a second; when it is re-parented (the run is gone, even by SIGKILL)
it SIGTERMs them, SIGKILLs what is left after a few seconds, and exits. It ignores SIGINT/SIGTERM/SIGHUP
(a Ctrl-C or a scheduler's signal is for the run, which shuts its engine down itself) and ends quietly on
"stop" from the run. It also writes what it saw to a record file, so that a rerun can end processes
that outlived the watchdog too (a `kill -9` of both, `pkill -f batchgen`: vLLM renames its processes).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Iterable

import psutil

SCAN_SECONDS = 0.2  # how often the run's process tree is read while it changes
CALM_SCAN_SECONDS = 2.0  # ... and once it has not changed for CALM_AFTER_SECONDS (an engine that is up)
CALM_AFTER_SECONDS = 60.0
TERM_SECONDS = 5.0  # SIGTERM first (vLLM cleans up its shared memory), SIGKILL after this


@dataclass(frozen=True)
class Proc:
    """A process by pid and start time: the pair names one process, never a later one with a recycled pid."""

    pid: int
    started: float
    cmd: str

    @classmethod
    def of(cls, p: psutil.Process) -> Proc:
        with p.oneshot():
            return cls(p.pid, p.create_time(), " ".join(p.cmdline())[:200] or p.name())

    def live(self) -> psutil.Process | None:
        """The process if it still runs (same pid and start time, not a zombie), else None."""
        try:
            p = psutil.Process(self.pid)
            if abs(p.create_time() - self.started) > 0.05 or p.status() == psutil.STATUS_ZOMBIE:
                return None
            return p
        except psutil.Error:
            return None


def end_processes(procs: Iterable[Proc], wait: float = TERM_SECONDS) -> list[Proc]:
    """SIGTERM the ones still alive, SIGKILL those left after `wait`. Returns the ones that were alive.
    multiprocessing's resource tracker is spared: it exits by itself once its users are gone."""
    alive = [(rec, p) for rec in procs if (p := rec.live()) is not None and "resource_tracker" not in rec.cmd]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for _, p in alive:
            try:
                p.send_signal(sig)  # psutil refuses if the pid was recycled meanwhile
            except psutil.Error:
                continue
        end = time.monotonic() + wait
        while time.monotonic() < end and any(rec.live() for rec, _ in alive):
            time.sleep(0.05)
    return [rec for rec, _ in alive]


def read_record(path: Path) -> list[Proc]:
    """The processes a record names; none if it was written on another host (a state folder on a shared
    home), since pids and start times mean something on their own host only."""
    try:
        data = json.loads(path.read_text())
        if data.get("host", socket.gethostname()) != socket.gethostname():
            return []
        return [Proc(int(p["pid"]), float(p["started"]), str(p.get("cmd", ""))) for p in data.get("processes", [])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []  # none, or unreadable: nothing to act on


def write_record(path: Path, parent: Proc, procs: Iterable[Proc]) -> None:
    """Atomically (tmp + rename): a reader sees the old record or the new one. A record that cannot be
    written costs only the rerun's check, not the watchdog."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    record = {"host": socket.gethostname(), "parent": asdict(parent), "processes": [asdict(p) for p in procs]}
    try:
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass


class Watchdog:
    """The run's handle on its watchdog process."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    @classmethod
    def start(cls, record: Path | None) -> Watchdog:
        """Start it and wait until it has seen the processes that exist now (those are not the engine's)."""
        proc = subprocess.Popen([sys.executable, "-m", "batchgen.run.watchdog"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, start_new_session=True)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps({"parent": os.getpid(), "record": str(record) if record else None}).encode() + b"\n")
        proc.stdin.flush()
        proc.stdout.readline()  # "ready" (or EOF if it failed to start: the run goes on unguarded)
        proc.stdout.close()
        return cls(proc)

    def stop(self, timeout: float = 2 * TERM_SECONDS + 5) -> None:
        """The run ends normally: the watchdog ends what its engine left (nothing, normally) and exits."""
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"stop\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


def serve(parent: int, record: Path | None, out: IO[str]) -> None:
    """The watchdog's loop (in its own process)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    try:
        root = psutil.Process(parent)
        me = Proc.of(psutil.Process())
        before = {p.pid for p in root.children(recursive=True)} | {me.pid}
        parent_rec = Proc.of(root)
    except psutil.Error:
        return
    _say(out, "ready")
    seen: dict[int, Proc] = {}
    changed = next_scan = time.monotonic()
    while not _told_to_stop(SCAN_SECONDS) and os.getppid() == parent:
        now = time.monotonic()
        if now < next_scan:
            continue
        # Kept while alive, not while in the tree: a scan just after the run died sees no children (they
        # were re-parented) and must not make us forget them.
        current = {pid: p for pid, p in seen.items() if p.live()} | _descendants(root, before)
        if set(current) != set(seen):
            seen, changed = current, now
            if record is not None:
                write_record(record, parent_rec, seen.values())
        next_scan = now + (SCAN_SECONDS if now - changed < CALM_AFTER_SECONDS else CALM_SCAN_SECONDS)
    ended = end_processes(seen.values())
    if ended:
        why = f"the run (pid {parent}) is gone" if os.getppid() != parent else "the run's engine shut down but left them"
        _say(out, f"[batchgen] WARNING {why}: its watchdog ended {len(ended)} engine process(es): "
                  + ", ".join(f"{p.pid} {p.cmd[:60]}" for p in ended), stderr=True)


def _descendants(root: psutil.Process, before: set[int]) -> dict[int, Proc]:
    found = {}
    try:
        children = root.children(recursive=True)
    except psutil.Error:
        return {}
    for p in children:
        if p.pid not in before:
            try:
                found[p.pid] = Proc.of(p)
            except psutil.Error:  # gone meanwhile
                continue
    return found


def _told_to_stop(timeout: float) -> bool:
    """Wait up to `timeout` for a word from the run on stdin: "stop", or EOF (the run closed it or is gone)."""
    ready, _, _ = select.select([0], [], [], timeout)
    if ready:
        os.read(0, 64)
    return bool(ready)


def _config() -> dict:
    """The run's first line on stdin (read unbuffered: what follows it is for _told_to_stop)."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(0, 1)
        if not chunk:
            raise SystemExit(0)
        line += chunk
    return json.loads(line)


def _say(out: IO[str], line: str, stderr: bool = False) -> None:
    try:
        print(line, file=sys.stderr if stderr else out, flush=True)
    except OSError:  # the run's pipes may be gone with it
        pass


if __name__ == "__main__":
    _cfg = _config()
    serve(_cfg["parent"], Path(_cfg["record"]) if _cfg["record"] else None, sys.stdout)
