"""The engine protocol the runner drives: add requests, step, collect finished completions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from batchgen.job.spec import SamplingSpec


@dataclass(slots=True)
class Request:
    """One row on its way to the engine (or to the output as an error row)."""

    unit: str
    row_index: int
    id: Any
    seed: int
    sampling: SamplingSpec
    token_ids: list[int] = field(default_factory=list)
    passthrough: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    # The engine's request id: unique within a run (a unit's rows have distinct row indexes). Made once:
    # the loop looks it up several times per row.
    key: str = field(init=False, default="")
    score_from: int | None = None  # scoring mode: the first prompt position whose logprob is scored (run.scoring)
    lora: str | None = None  # the LoRA adapter's name (model.lora), or None for the base model
    images: list[Any] | None = None  # decoded images (PIL), one per placeholder in token_ids

    def __post_init__(self) -> None:
        self.key = f"{self.unit}#{self.row_index}"


@dataclass
class Completion:
    """A finished request, keyed like the Request it answers."""

    key: str
    texts: list[str]
    finish_reasons: list[str]
    output_tokens: list[int]
    prompt_tokens: int
    cached_tokens: int
    error: str | None = None
    # Only when the request asks (sampling.logprobs, prompt_logprobs, choice_scores), as plain data shaped
    # like the output columns (io/columns.py): per completion, per token {token, token_id, logprob, rank,
    # top_logprobs}; per prompt position the same (position 0: no logprob); label -> probability.
    logprobs: list[list[dict[str, Any]]] | None = None
    cumulative_logprobs: list[float | None] | None = None
    prompt_logprobs: list[dict[str, Any]] | None = None
    label_scores: dict[str, float] | None = None


@dataclass
class EngineInfo:
    kind: str
    version: str
    device: str
    model: str
    max_model_len: int | None
    max_num_seqs: int | None
    start_seconds: float
    # The options the engine ended up with once it resolved its defaults (vLLM: read from its config).
    options: dict[str, Any] = field(default_factory=dict)


class Engine(Protocol):
    info: EngineInfo

    @property
    def max_prompt_tokens(self) -> int | None:
        """Longest prompt the engine takes (max_model_len - 1: room for one generated token)."""

    def add(self, req: Request) -> str | None:
        """Queue a request. Returns an error text if the engine refuses it (that row becomes an error row)."""

    def step(self) -> list[Completion]:
        """Run one engine step; return the requests that finished in it."""

    def in_flight(self) -> int: ...

    def abort_all(self) -> list[str]:
        """Drop every unfinished request; return their keys."""

    def close(self) -> None: ...
