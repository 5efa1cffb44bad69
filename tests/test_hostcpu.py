"""The host CPU probe: cores per process over a window, and each one's busiest thread."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from batchgen.run.hostcpu import HostCpu, brief, shares


def _spin(stop: threading.Event) -> None:
    while not stop.is_set():
        pass


def test_a_spinning_thread_and_a_spinning_child_show_as_about_one_core_each():
    child = subprocess.Popen([sys.executable, "-c", "import time\nt=time.monotonic()\nwhile time.monotonic()-t<30: pass"])
    stop = threading.Event()
    try:
        time.sleep(0.5)  # the child is running: the probe counts it from its first snapshot
        cpu = HostCpu()
        spinner = threading.Thread(target=_spin, args=(stop,))
        spinner.start()
        time.sleep(1.5)  # this main thread sleeps: the spinning thread is this process's busiest
        got = {p["pid"]: p for p in cpu.shares()}
    finally:
        stop.set()
        child.kill()
        child.wait()
    me = next(p for p in got.values() if p["process"] == "batchgen")
    # Two cores on this machine: the spinner and the child each get most of one (other work shares them).
    assert 0.4 < me["busiest_thread"] <= me["cores"] + 0.02 and me["cores"] < 1.3, me
    assert got[child.pid]["busiest_thread"] > 0.4, got
    assert "batchgen" in brief(list(got.values())) and "busiest thread" in brief(list(got.values()))


def test_a_thread_that_ended_still_counts_in_its_process():
    cpu = HostCpu()
    stop = threading.Event()
    spinner = threading.Thread(target=_spin, args=(stop,))
    spinner.start()
    time.sleep(1.0)
    stop.set()
    spinner.join()
    me = next(p for p in cpu.shares() if p["process"] == "batchgen")
    assert me["cores"] > 0.4 and me["busiest_thread"] < 0.2, me  # its time stays; no live thread was busy


def test_shares_count_new_threads_and_processes_from_zero():
    before = {1: ("a", 6.0, {10: 5.0, 11: 1.0}), 2: ("gone", 3.0, {20: 3.0})}
    after = {1: ("a", 9.0, {10: 7.0, 11: 1.5, 12: 0.5}), 3: ("new", 1.0, {30: 1.0})}
    assert shares(before, after, wall=2.0) == [{"process": "a", "pid": 1, "cores": 1.5, "busiest_thread": 1.0},
                                               {"process": "new", "pid": 3, "cores": 0.5, "busiest_thread": 0.5}]
