"""How busy the GPU was during a run's generation window: NVML's utilization (the share of the last sample
period in which at least one kernel ran), sampled by the harness while a method's process runs.

The host-CPU figures (`host_cpu`) say which thread came closest to a whole core; this says whether the GPU
still had idle time to give. A GPU near 100% busy leaves no room for another engine beside it; a GPU well
below it waits on the host. NVML's figure is coarse (a tiny kernel counts as busy time) but it is the same
for every method. Without NVML (the CPU build) nothing is sampled and runs record no figure.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import ExitStack
from typing import Any

from batchgen.node.gpus import nvml_handle, nvml_session


class GpuBusy:
    """A sampling thread for the block's duration: `with GpuBusy() as busy: ...; busy.mean(start, end)`. It samples
    the first GPU this process may use (CUDA_VISIBLE_DEVICES: an index or a UUID), as the harness's processes do."""

    def __init__(self, period: float = 0.5) -> None:
        self.period = period
        self.samples: list[tuple[float, int]] = []  # (time.time(), utilization %)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nv: Any = None
        self._session = ExitStack()

    def __enter__(self) -> GpuBusy:
        nv = self._session.enter_context(nvml_session("no GPU busy figures"))
        if nv is None:  # no NVML, no GPU (the CPU build): nothing to sample
            return self
        try:
            handle = nvml_handle(nv, os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip())
        except (nv.NVMLError, ValueError):
            self._session.close()
            return self
        self._nv = nv
        self._thread = threading.Thread(target=self._sample, args=(handle,), name="gpu-busy", daemon=True)
        self._thread.start()
        return self

    def _sample(self, handle: Any) -> None:
        while not self._stop.wait(self.period):
            try:
                self.samples.append((time.time(), int(self._nv.nvmlDeviceGetUtilizationRates(handle).gpu)))
            except self._nv.NVMLError:
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._session.close()

    def mean(self, start: float | None, end: float | None) -> float | None:
        """Mean utilization (0-1) of the samples between two wall-clock times; None without samples there."""
        return window_mean(self.samples, start, end)


def window_mean(samples: list[tuple[float, int]], start: float | None, end: float | None) -> float | None:
    if not start or not end:
        return None
    inside = [u for t, u in samples if start <= t <= end]
    return round(sum(inside) / len(inside) / 100, 3) if inside else None
