"""GPU discovery and each GPU's nearby cores: NVML (its functions faked: no GPU here), and the sysfs fallback."""

from __future__ import annotations

from types import SimpleNamespace

import pynvml
import pytest

from batchgen.node import gpus
from batchgen.node.affinity import gpu_local_cpus
from batchgen.node.gpus import Gpu, gpu_names, node_gpus, nvml_gpus, sysfs_gpus, visible_gpus


def pci_device(sysfs, bus: str, vendor: str, cls: str, cpus: str = "") -> None:
    dev = sysfs / bus
    dev.mkdir(parents=True)
    (dev / "vendor").write_text(vendor + "\n")
    (dev / "class").write_text(cls + "\n")
    if cpus:
        (dev / "local_cpulist").write_text(cpus + "\n")


@pytest.fixture
def two_socket_sysfs(tmp_path):
    """GPU 0 on socket 1 (cores 8-15), GPU 1 on socket 0 (0-7), beside an NVIDIA audio function and an Intel VGA."""
    sysfs = tmp_path / "pci"
    pci_device(sysfs, "0000:3b:00.0", "0x10de", "0x030200", "8-15")
    pci_device(sysfs, "0000:3b:00.1", "0x10de", "0x040300", "8-15")  # the GPU's HDMI audio: not a GPU
    pci_device(sysfs, "0000:00:02.0", "0x8086", "0x030000", "0-7")  # on-board graphics: not NVIDIA
    pci_device(sysfs, "0000:af:00.0", "0x10de", "0x030000", "0-7")
    return sysfs


@pytest.fixture
def fake_nvml(monkeypatch):
    """NVML's functions replaced: two H200s; GPU 1 cannot report its affinity (NOT_SUPPORTED, as on some VMs)."""
    calls = []

    def affinity(handle, size):
        calls.append(size)
        if handle == 1:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return [0xFF00] + [0] * (size - 1)  # cores 8-15

    fakes = {
        "nvmlInit": lambda: calls.append("init"), "nvmlShutdown": lambda: calls.append("shutdown"),
        "nvmlDeviceGetCount": lambda: 2, "nvmlDeviceGetHandleByIndex": lambda i: i,
        "nvmlDeviceGetUUID": lambda h: f"GPU-{h}aaa".encode(), "nvmlDeviceGetName": lambda h: "NVIDIA H200",
        "nvmlDeviceGetPciInfo": lambda h: SimpleNamespace(busId=[b"00000000:3B:00.0", b"00000000:AF:00.0"][h]),
        "nvmlDeviceGetCpuAffinity": affinity,
        "nvmlDeviceGetHandleByUUID": lambda u: int(u[4]), "nvmlDeviceGetMemoryInfo": lambda h: SimpleNamespace(total=(h + 1) << 30),
    }
    for name, fn in fakes.items():
        monkeypatch.setattr(pynvml, name, fn)
    return calls


def test_nvml_lists_gpus_with_their_bus_ids_and_cores(fake_nvml, two_socket_sysfs):
    found = node_gpus(sysfs=two_socket_sysfs)
    assert found == [Gpu("0", "GPU-0aaa", "NVIDIA H200", "0000:3b:00.0", tuple(range(8, 16))),
                     Gpu("1", "GPU-1aaa", "NVIDIA H200", "0000:af:00.0", ())]
    assert fake_nvml[0] == "init" and fake_nvml[-1] == "shutdown"
    local = gpu_local_cpus(found, sysfs=two_socket_sysfs)
    # GPU 1's NVML affinity failed: its PCI device's local_cpulist stands in; both spellings of each GPU.
    assert local == {"0": list(range(8, 16)), "GPU-0aaa": list(range(8, 16)), "1": list(range(8)), "GPU-1aaa": list(range(8))}
    assert visible_gpus({}) == ["0", "1"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "1,-1,0"}) == ["1"]  # CUDA stops at the first invalid entry
    assert gpu_names() == ["NVIDIA H200", "NVIDIA H200"]


def test_gpu_memory_by_index_or_uuid(fake_nvml, monkeypatch):
    assert gpus.gpu_memory_bytes("0") == 1 << 30 and gpus.gpu_memory_bytes("GPU-1aaa") == 2 << 30
    assert fake_nvml[-1] == "shutdown"
    assert gpus.gpu_memory_bytes("not-a-gpu") is None  # neither an index nor a UUID

    def no_library():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_library)
    assert gpus.gpu_memory_bytes("0") is None and gpus.nvml_gpus() is None


def test_affinity_mask_words_are_64_bit():
    assert gpus._cpus_of_mask([1 << 63, 0b101]) == (63, 64, 66)


def test_nvml_failing_mid_listing_falls_back_to_sysfs(fake_nvml, monkeypatch, two_socket_sysfs):
    def lost(_h):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    monkeypatch.setattr(pynvml, "nvmlDeviceGetUUID", lost)
    assert [g.bus_id for g in node_gpus(sysfs=two_socket_sysfs)] == ["0000:3b:00.0", "0000:af:00.0"]
    assert fake_nvml[-1] == "shutdown"


def test_sysfs_lists_nvidia_gpus_in_bus_order(two_socket_sysfs):
    found = sysfs_gpus(two_socket_sysfs)
    assert [(g.index, g.bus_id) for g in found] == [("0", "0000:3b:00.0"), ("1", "0000:af:00.0")]
    assert gpu_local_cpus(found, sysfs=two_socket_sysfs) == {"0": list(range(8, 16)), "1": list(range(8))}


@pytest.mark.skipif(nvml_gpus() is not None, reason="NVML works on this machine: the no-NVML fallback cannot be seen")
def test_without_nvml_the_fallback_is_sysfs(two_socket_sysfs):
    """For real (no NVIDIA driver here): GPUs to use come only from NVML or CUDA_VISIBLE_DEVICES; topology from sysfs."""
    assert visible_gpus({}) == [] and gpu_names() == []
    assert [g.bus_id for g in node_gpus(sysfs=two_socket_sysfs)] == ["0000:3b:00.0", "0000:af:00.0"]
    assert node_gpus() == sysfs_gpus()  # this machine's own PCI bus
