"""The GPUs of this node: which ones this process may use, where each sits, and the cores near it.

Read through NVML (`nvidia-ml-py`, the library nvidia-smi itself is built on): it answers in
milliseconds and, unlike torch, does not initialize CUDA (the supervisor must not hold memory on
every GPU). Where NVML cannot be loaded (no driver, or a container without its library) the PCI
devices in sysfs stand in for the topology.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

log = logging.getLogger("batchgen")

SYSFS_PCI = Path("/sys/bus/pci/devices")
NVIDIA_VENDOR = "0x10de"
# PCI classes of GPUs: VGA controller (0x0300) and 3D controller (0x0302, the data-centre parts).
GPU_CLASSES = ("0x0300", "0x0302")


@dataclass(frozen=True)
class Gpu:
    index: str  # as CUDA_VISIBLE_DEVICES numbers it (NVML and sysfs both order by PCI bus id)
    uuid: str  # "" when unknown (sysfs)
    name: str
    bus_id: str  # sysfs spelling: 0000:3b:00.0
    cpus: tuple[int, ...]  # the cores near it (NVML's ideal affinity); () when NVML could not say


def visible_gpus(env: Mapping[str, str]) -> list[str]:
    """GPUs this process may use, as CUDA_VISIBLE_DEVICES entries: that variable if set, else every GPU NVML sees."""
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        ids: list[str] = []
        for item in listed.split(","):
            item = item.strip()
            if not item or item.startswith("-"):  # CUDA stops at the first invalid entry ("-1" hides all)
                break
            ids.append(item)
        return ids
    # Not sysfs here: a container may list the host's every GPU on its PCI bus but be given only some.
    return [g.index for g in nvml_gpus() or []]


def node_gpus(sysfs: Path = SYSFS_PCI) -> list[Gpu]:
    """Every GPU of the node with its topology: from NVML, else from sysfs's PCI devices."""
    found = nvml_gpus()
    return found if found is not None else sysfs_gpus(sysfs)


def gpu_names() -> list[str]:
    """Names of this node's GPUs (NVML), empty without any."""
    return [g.name for g in nvml_gpus() or []]


@contextmanager
def nvml_session(without: str) -> Iterator[Any]:
    """pynvml, initialized for the block and shut down after it; None where NVML cannot be used here."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as e:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, or no nvidia-ml-py
        log.debug("NVML unavailable (%s): %s", e, without)
        yield None
        return
    try:
        yield pynvml
    finally:
        pynvml.nvmlShutdown()


def nvml_gpus() -> list[Gpu] | None:
    """The GPUs NVML reports, or None if NVML cannot be used here."""
    with nvml_session("no GPUs from NVML") as nv:
        if nv is None:
            return None
        try:
            return [_nvml_gpu(nv, i) for i in range(nv.nvmlDeviceGetCount())]
        except nv.NVMLError as e:
            log.warning("NVML failed while listing GPUs (%s); GPU topology from sysfs instead", e)
            return None


def gpu_memory_bytes(gpu: str) -> int | None:
    """Total memory of one GPU, named as CUDA_VISIBLE_DEVICES names it (index or UUID); None without NVML."""
    with nvml_session("GPU memory unknown") as nv:
        if nv is None:
            return None
        try:
            return int(nv.nvmlDeviceGetMemoryInfo(nvml_handle(nv, gpu)).total)
        except (nv.NVMLError, ValueError) as e:
            log.warning("NVML could not read the memory of GPU %s (%s)", gpu, e)
            return None


def nvml_handle(nv: Any, gpu: str) -> Any:
    """NVML's handle of one GPU named as CUDA_VISIBLE_DEVICES names it: an index or a UUID (ValueError otherwise)."""
    return nv.nvmlDeviceGetHandleByUUID(gpu) if gpu.startswith(("GPU-", "MIG-")) else nv.nvmlDeviceGetHandleByIndex(int(gpu))


def _nvml_gpu(pynvml: Any, index: int) -> Gpu:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    try:
        cpus = _cpus_of_mask(pynvml.nvmlDeviceGetCpuAffinity(handle, -(-(os.cpu_count() or 1) // 64)))
    except pynvml.NVMLError:  # NOT_SUPPORTED on some platforms: the bus id still finds it in sysfs
        cpus = ()
    return Gpu(index=str(index), uuid=_text(pynvml.nvmlDeviceGetUUID(handle)), name=_text(pynvml.nvmlDeviceGetName(handle)),
               bus_id=sysfs_bus_id(_text(pynvml.nvmlDeviceGetPciInfo(handle).busId)), cpus=cpus)


def _cpus_of_mask(words: Any) -> tuple[int, ...]:
    """NVML's affinity: 64-bit words, bit b of word w is core 64*w + b."""
    return tuple(64 * w + b for w, word in enumerate(words) for b in range(64) if int(word) >> b & 1)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def sysfs_bus_id(bus_id: str) -> str:
    """NVML writes 00000000:3B:00.0; sysfs names the device 0000:3b:00.0."""
    domain, _, rest = bus_id.lower().partition(":")
    return f"{domain[-4:]}:{rest}"


def sysfs_gpus(sysfs: Path = SYSFS_PCI) -> list[Gpu]:
    """NVIDIA GPUs among the PCI devices, in bus order (CUDA's PCI_BUS_ID order); no uuid, no NVML affinity."""
    found = []
    for dev in sorted(sysfs.glob("*")):
        try:
            vendor, cls = (dev / "vendor").read_text().strip(), (dev / "class").read_text().strip()
        except OSError:
            continue
        if vendor == NVIDIA_VENDOR and cls[:6] in GPU_CLASSES:
            found.append(dev.name)
    return [Gpu(index=str(i), uuid="", name="NVIDIA GPU", bus_id=bus, cpus=()) for i, bus in enumerate(found)]
