"""Where the host's CPU time went while generating: this process and its children (vLLM's EngineCore and
its workers), each as cores used over the generation window, with its busiest thread.

On a host-bound workload (a small model on a fast GPU) one thread sets the pace: batchgen's loop (this
process's main thread, which also runs vLLM's output processing and detokenizer) or vLLM's scheduler (the
EngineCore's busy loop). A busiest thread near 1.0 is that limit. Summaries record it (`host_cpu`), and the
benchmark's raw loop records the same, so a GPU run says which thread it was. Per-thread times are read
from /proc through psutil, once at the window's start and once at its end.
"""

from __future__ import annotations

import os
import time
from typing import Any

import psutil

# pid -> (process name, CPU seconds of the process (exited threads included), {live thread id: CPU seconds})
Snapshot = dict[int, tuple[str, float, dict[int, float]]]


def snapshot(root: int | None = None) -> Snapshot:
    """CPU seconds of `root` (default: this process) and of its descendants, and of each of their threads."""
    top = psutil.Process(root or os.getpid())
    out: Snapshot = {}
    for p in [top, *top.children(recursive=True)]:
        try:
            with p.oneshot():
                t = p.cpu_times()
                out[p.pid] = (p.name(), t.user + t.system, {th.id: th.user_time + th.system_time for th in p.threads()})
        except psutil.Error:  # gone meanwhile
            continue
    return out


def shares(before: Snapshot, after: Snapshot, wall: float, own_name: str = "batchgen") -> list[dict[str, Any]]:
    """Per process alive at the end: cores used between the snapshots, and the busiest of its threads alive at
    the end as a share of a core (processes and threads that started meanwhile count from zero); the
    busiest process first."""
    me = os.getpid()
    wall = max(wall, 1e-9)
    out = []
    for pid, (name, total, threads) in after.items():
        _, old_total, old = before.get(pid, ("", 0.0, {}))
        busiest = max((cpu - old.get(tid, 0.0) for tid, cpu in threads.items()), default=0.0)
        out.append({"process": own_name if pid == me else name, "pid": pid,
                    "cores": round((total - old_total) / wall, 3), "busiest_thread": round(busiest / wall, 3)})
    return sorted(out, key=lambda d: -d["cores"])


class HostCpu:
    """Started when generation starts; `shares()` before the engine closes (its processes end with it)."""

    def __init__(self, own_name: str = "batchgen") -> None:
        self.own_name = own_name
        self.t0 = time.monotonic()
        self.before = snapshot()

    def shares(self, wall: float | None = None) -> list[dict[str, Any]]:
        """Since the start, over `wall` seconds (default: until now; a run that waited after its last result
        passes its generation time)."""
        try:
            return shares(self.before, snapshot(), wall or time.monotonic() - self.t0, self.own_name)
        except psutil.Error:  # diagnostics only: never fail a run over them
            return []


def brief(entries: list[dict[str, Any]], top: int = 3) -> str:
    """`VLLM::EngineCore 1.02 cores (busiest thread 0.99), batchgen 0.60 cores (busiest thread 0.41)`."""
    parts = [f"{e['process']} {e['cores']:.2f} cores (busiest thread {e['busiest_thread']:.2f})" for e in entries[:top]]
    return ", ".join(parts)
