"""On a GPU node (vLLM 0.26, CUDA): NVML's view of the GPUs, `--version`, and a quiet run. For the lead:
`python -m pytest -m gpu tests/test_gpu_node.py` on the device machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from batchgen.node.affinity import gpu_local_cpus
from batchgen.node.gpus import SYSFS_PCI, node_gpus, visible_gpus
from tests.conftest import ROOT, job_dict, write_job, write_shards
from tests.test_cli import VLLM_LINE, VLLM_VIA_OURS, _run

pytestmark = pytest.mark.gpu


def test_nvml_sees_every_gpu_with_its_topology():
    gpus = node_gpus()
    assert gpus, "NVML found no GPU"
    allowed = set(os.sched_getaffinity(0))
    for g in gpus:
        assert g.uuid.startswith("GPU-") and g.name.startswith("NVIDIA"), g
        assert (SYSFS_PCI / g.bus_id).exists(), f"{g.bus_id}: NVML's bus id, in sysfs' spelling"
        assert g.cpus and set(g.cpus) <= set(range(os.cpu_count() or 1)), g
    local = gpu_local_cpus(gpus)
    assert all(local[g.index] and local[g.uuid] == local[g.index] for g in gpus)
    assert visible_gpus({}) == [str(i) for i in range(len(gpus))]
    print({g.index: (g.name, g.bus_id, len(g.cpus), len(set(g.cpus) & allowed)) for g in gpus})


def test_version_names_the_gpus():
    out = subprocess.run([sys.executable, "-m", "batchgen", "--version"], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    device = out.splitlines()[3]
    assert device.startswith("device ") and "NVIDIA" in device, out


def test_a_gpu_run_is_quiet(tmp_path: Path, tiny_model):
    write_shards(tmp_path / "in", shards=1, rows=6)
    job = write_job(tmp_path / "job.yaml", job_dict(tiny_model, tmp_path / "in", tmp_path / "out"))
    out, err = _run(job, env={"VLLM_ENABLE_V1_MULTIPROCESSING": "1", "CUDA_VISIBLE_DEVICES": "0"})
    assert not [line for line in out + err if (m := VLLM_LINE.match(line) or VLLM_VIA_OURS.match(line)) and "INFO" in m[0]]
    assert not any("Passing raw prompts" in line for line in out + err)
    assert out[0].startswith("batchgen summary") and all(line.startswith("  ") for line in out[1:])
