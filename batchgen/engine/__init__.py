"""Engines behind one small protocol: the real vLLM one, and an instant one for measuring batchgen itself."""

from __future__ import annotations

from batchgen.engine.base import Completion, Engine, EngineInfo
from batchgen.job.spec import JobSpec


def start_engine(spec: JobSpec, log_level: str | None = None) -> Engine:
    """Start the engine the spec asks for (imports vLLM only when it is needed); `log_level` is vLLM's own."""
    if spec.runtime.engine == "instant":
        from batchgen.engine.instant import InstantEngine

        return InstantEngine(spec)
    from batchgen.engine.vllm import VllmEngine

    return VllmEngine(spec, log_level=log_level)


__all__ = ["Completion", "Engine", "EngineInfo", "start_engine"]
