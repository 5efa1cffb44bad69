"""An engine that answers at once, without a model: it measures batchgen's own per-row cost.

Used by `runtime.engine: instant` (benchmarks of read/render/tokenize/write/commit) and by unit
tests that isolate runner logic. Never the only test of a path a user runs with a real model.
With `runtime.instant_rows_per_second` it finishes rows at a fixed rate instead, however they are
batched: N such engines can do exactly N times one's rows/s, and whatever is missing is batchgen's
(idle engines, start skew, the tail; benchmarks/scaleout.py).
"""

from __future__ import annotations

import time

from batchgen.engine.base import Completion, EngineInfo, Request
from batchgen.job.spec import JobSpec


class InstantEngine:
    """Finishes up to `max_num_seqs` requests per step, at once or at runtime.instant_rows_per_second."""

    def __init__(self, spec: JobSpec, max_num_seqs: int = 256):
        self.info = EngineInfo(kind="instant", version="-", device="none", model=spec.model.path,
                               max_model_len=spec.model.max_model_len, max_num_seqs=max_num_seqs, start_seconds=0.0,
                               options={"max_num_seqs": max_num_seqs})
        self._pending: list[Request] = []
        self._max_num_seqs = max_num_seqs
        self._rate = spec.runtime.instant_rows_per_second

    @property
    def max_prompt_tokens(self) -> int | None:
        return self.info.max_model_len - 1 if self.info.max_model_len else None

    def add(self, req: Request) -> str | None:
        self._pending.append(req)
        return None

    def step(self) -> list[Completion]:
        batch, self._pending = self._pending[: self._max_num_seqs], self._pending[self._max_num_seqs:]
        if self._rate and batch:
            time.sleep(len(batch) / self._rate)  # a synchronous step: the host waits, as it does for a GPU
        return [
            Completion(key=r.key, texts=[f"echo {len(r.token_ids)} tokens"] * r.sampling.n,
                       finish_reasons=["length"] * r.sampling.n, output_tokens=[min(r.sampling.max_tokens, 8)] * r.sampling.n,
                       prompt_tokens=len(r.token_ids), cached_tokens=0)
            for r in batch
        ]

    def in_flight(self) -> int:
        return len(self._pending)

    def abort_all(self) -> list[str]:
        keys = [r.key for r in self._pending]
        self._pending.clear()
        return keys

    def close(self) -> None:
        self._pending.clear()


