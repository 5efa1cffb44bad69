"""Core groups for the engines of a node: near their GPUs where sysfs says, equal slices otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from batchgen.node import affinity
from batchgen.node.affinity import engine_cpu_groups, even_groups, format_cpulist, local_cpus, parse_cpulist, plan_affinity
from batchgen.node.gpus import sysfs_bus_id
from batchgen.node.supervisor import pin_to

# Two sockets of 8 cores, cores numbered socket by socket; GPU 0 hangs off the second socket.
NODE0, NODE1 = list(range(0, 8)), list(range(8, 16))


def test_cpulist_round_trip():
    assert parse_cpulist("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert format_cpulist([11, 10, 8, 3, 2, 1, 0]) == "0-3,8,10-11"
    assert parse_cpulist(format_cpulist([5])) == [5]


def test_even_groups():
    assert even_groups(list(range(8)), 2) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert even_groups([0, 1], 4) == [[0], [1]]  # fewer cores than engines: engines share (caller wraps)
    assert even_groups([], 2) == []


def test_each_engine_gets_the_cores_near_its_gpu():
    groups, numa = engine_cpu_groups(NODE0 + NODE1, [("0",), ("1",)], {"0": NODE1, "1": NODE0})
    assert numa and groups == [NODE1, NODE0]


def test_engines_on_one_numa_node_split_its_cores():
    local = {g: NODE0 for g in "0123"}
    groups, numa = engine_cpu_groups(NODE0 + NODE1, [("0",), ("1",), ("2",), ("3",)], local)
    assert numa and groups == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_only_allowed_cores_are_used():
    groups, numa = engine_cpu_groups([0, 1, 2, 3, 12, 13], [("0",), ("1",)], {"0": NODE0, "1": NODE1})
    assert numa and groups == [[0, 1, 2, 3], [12, 13]]


@pytest.mark.parametrize("gpus,local", [
    ([("0",), ("1",)], {"0": NODE0}),  # GPU 1's locality unknown
    ([("0",), ("1",)], {"0": NODE0, "1": NODE0[:4] + NODE1}),  # overlapping localities
    ([("0",), ("1",), ("2",)], {"0": [0], "1": [0], "2": [0]}),  # one core for three engines
], ids=["unknown", "overlapping", "too-few-cores"])
def test_unknown_or_conflicting_topology_falls_back_to_equal_slices(gpus, local):
    groups, numa = engine_cpu_groups(NODE0 + NODE1, gpus, local)
    assert not numa
    assert groups == even_groups(NODE0 + NODE1, len(gpus))


def test_local_cpus_reads_sysfs(tmp_path):
    dev = tmp_path / "0000:3b:00.0"
    dev.mkdir()
    (dev / "local_cpulist").write_text("16-31\n")
    assert local_cpus(sysfs_bus_id("00000000:3B:00.0"), sysfs=tmp_path) == list(range(16, 32))  # NVML's spelling
    assert local_cpus("0000:af:00.0", sysfs=tmp_path) == []


def test_a_pinned_engine_process_runs_on_its_cores_only():
    core = sorted(os.sched_getaffinity(0))[-1]
    out = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                         preexec_fn=pin_to([core]), capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"[{core}]"


def test_gpu_engines_with_too_few_cores_are_not_pinned(monkeypatch):
    monkeypatch.setattr(affinity, "node_gpus", list)  # no topology, as on a machine without NVML or GPUs in sysfs
    assert plan_affinity(list(range(6)), [("0",), ("1",)]) == [[], []]  # 3 cores each: below the floor
    assert plan_affinity(list(range(8)), [("0",), ("1",)]) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert plan_affinity([0, 1], [(), (), ()]) == [[0], [1], [0]]  # CPU engines: vLLM binds its threads anyway
