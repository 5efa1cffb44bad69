"""The GPUs of this node: which ones this process may use, and where each sits on the PCI bus.

Not torch: importing it takes seconds, and initializing CUDA in the supervisor would hold memory on
every GPU.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Mapping


def visible_gpus(env: Mapping[str, str]) -> list[str]:
    """GPUs this process may use, as CUDA_VISIBLE_DEVICES entries: that variable if set, else `nvidia-smi -L`."""
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        ids: list[str] = []
        for item in listed.split(","):
            item = item.strip()
            if not item or item.startswith("-"):  # CUDA stops at the first invalid entry ("-1" hides all)
                break
            ids.append(item)
        return ids
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(line for line in out.splitlines() if line.startswith("GPU "))]


def gpu_bus_ids(timeout: float = 10.0) -> dict[str, str]:
    """Every GPU's PCI bus id, keyed by both its index and its UUID (the two spellings of CUDA_VISIBLE_DEVICES)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {}
    try:
        out = subprocess.run([exe, "--query-gpu=index,uuid,pci.bus_id", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=timeout, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    ids: dict[str, str] = {}
    for line in out.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 3:
            index, uuid, bus = fields
            ids[index] = ids[uuid] = bus
    return ids
