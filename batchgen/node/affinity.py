"""CPU cores for the engines of one node: disjoint groups, each near its engine's GPUs.

An engine process does real CPU work next to its GPU (vLLM's scheduler and detokenizer, batchgen's
reader, tokenizer and Parquet writer), and thread pools size themselves from the cores they may run
on (tokenizers' Rayon pool, torch's intra-op pool). Two engines that both see every core of the
node oversubscribe it and run on the far socket's memory; pinning each to its own group avoids both.

The group of a GPU engine is the set of cores local to its GPUs (NVML's CPU affinity of the device,
else sysfs `local_cpulist` of its PCI device); engines whose GPUs share a NUMA node split its cores.
Where topology cannot be read, the allowed cores are cut into equal consecutive groups.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

from batchgen.node.gpus import SYSFS_PCI, Gpu, node_gpus

log = logging.getLogger("batchgen")

# A GPU engine keeps about three threads busy (vLLM's engine core loop, its output processing, batchgen's
# reader/tokenizer); with fewer cores per engine than this, engines are not pinned.
MIN_GPU_ENGINE_CORES = 4


def parse_cpulist(text: str) -> list[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11] (the kernel's cpulist format)."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def even_groups(cpus: Sequence[int], n: int) -> list[list[int]]:
    """`n` disjoint consecutive groups of equal size (the remainder is left out); fewer if cores are short."""
    groups = max(1, min(n, len(cpus)))
    size = len(cpus) // groups
    return [list(cpus[g * size:(g + 1) * size]) for g in range(groups)] if cpus else []


def local_cpus(bus_id: str, sysfs: Path = SYSFS_PCI) -> list[int]:
    """Cores local to a PCI device (sysfs spelling of its bus id: 0000:3b:00.0)."""
    try:
        return parse_cpulist((sysfs / bus_id / "local_cpulist").read_text())
    except (OSError, ValueError):
        return []


def gpu_local_cpus(gpus: Sequence[Gpu], sysfs: Path = SYSFS_PCI) -> dict[str, list[int]]:
    """Each GPU's nearby cores, keyed by index and by UUID (the two spellings of CUDA_VISIBLE_DEVICES):
    NVML's affinity where it gave one, else the PCI device's local_cpulist."""
    local: dict[str, list[int]] = {}
    for g in gpus:
        cpus = list(g.cpus) or local_cpus(g.bus_id, sysfs)
        local[g.index] = cpus
        if g.uuid:
            local[g.uuid] = cpus
    return local


def engine_cpu_groups(allowed: Sequence[int], gpu_groups: Sequence[Sequence[str]],
                      local: Mapping[str, Sequence[int]]) -> tuple[list[list[int]], bool]:
    """One core group per engine, and whether the groups follow GPU locality.

    `local` maps a GPU (as named in `gpu_groups`) to its local cores. Engines whose GPUs have the same
    local cores share them out evenly. If any engine's locality is unknown, or a NUMA node has fewer
    cores than engines, every engine gets an equal slice of `allowed` instead.
    """
    allowed_set = set(allowed)
    near = [tuple(sorted({c for g in gpus for c in local.get(g, ())} & allowed_set)) for gpus in gpu_groups]
    if gpu_groups and all(near):
        sharing: dict[tuple[int, ...], list[int]] = {}
        for i, cores in enumerate(near):
            sharing.setdefault(cores, []).append(i)
        groups: list[list[int]] = [[] for _ in gpu_groups]
        for cores, engines in sharing.items():
            for engine, part in zip(engines, even_groups(cores, len(engines))):
                groups[engine] = part
        if all(groups) and _disjoint(groups):
            return groups, True
    n = max(1, len(gpu_groups))
    parts = even_groups(sorted(allowed), n)
    return ([parts[i % len(parts)] for i in range(n)] if parts else [[] for _ in range(n)]), False


def _disjoint(groups: Sequence[Sequence[int]]) -> bool:
    seen: set[int] = set()
    for g in groups:
        if seen & set(g):
            return False
        seen |= set(g)
    return True


def plan_affinity(allowed: Sequence[int], gpu_groups: Sequence[Sequence[str]]) -> list[list[int]]:
    """Core groups for the engines of this machine (GPU topology from NVML, else sysfs).

    GPU engines are left unpinned (empty groups) when a group would have fewer than
    MIN_GPU_ENGINE_CORES: an engine's busy threads then do better sharing every core than queueing on few.
    """
    gpu = any(gpu_groups)
    local = gpu_local_cpus(node_gpus()) if gpu else {}
    groups, numa = engine_cpu_groups(allowed, gpu_groups, local)
    if gpu and min(len(g) for g in groups) < MIN_GPU_ENGINE_CORES:
        log.info("engine cores: not pinned (%d cores for %d engines; pinning needs %d per engine)",
                 len(allowed), len(gpu_groups), MIN_GPU_ENGINE_CORES)
        return [[] for _ in gpu_groups]
    log.info("engine cores (%s): %s", "near their GPUs" if numa else "equal slices",
             "; ".join(f"e{i} {format_cpulist(g)}" for i, g in enumerate(groups)))
    return groups


def format_cpulist(cpus: Sequence[int]) -> str:
    """[0, 1, 2, 3, 8] -> '0-3,8'."""
    out: list[str] = []
    cpus = sorted(cpus)
    i = 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        out.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(out)
