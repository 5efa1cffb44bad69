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


def preload_engine(spec: JobSpec) -> None:
    """Import what start_engine needs (seconds for vLLM), so that a later start_engine only starts it."""
    if spec.runtime.engine == "vllm":
        import vllm.engine.arg_utils  # noqa: F401
        import vllm.v1.engine.llm_engine  # noqa: F401


__all__ = ["Completion", "Engine", "EngineInfo", "preload_engine", "start_engine"]
