"""Stopping an engine that is still starting.

vLLM starts its engine core in a child process and waits for its ready message in a zmq poll, which
swallows exceptions raised by signal handlers. So a start cut short (Runner._start_engine) kills our
child processes, which hold nothing yet but memory the next run needs, and exits the process.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("batchgen")


def kill_children() -> int:
    """SIGKILL every descendant of this process except multiprocessing's resource tracker (it cleans up
    after the others). Returns how many were killed; 0 without psutil (vLLM brings it)."""
    try:
        import psutil
    except ImportError:
        return 0
    killed = 0
    for child in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if "resource_tracker" in " ".join(child.cmdline()):
                continue
            child.kill()
            killed += 1
        except psutil.Error:  # already gone
            continue
    return killed
