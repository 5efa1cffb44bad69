"""One workload's sampling, three ways: batchgen's job `sampling:`, the raw loop's SamplingParams, and
the body of a run_batch request. A workload says it once (`Workload.sampling`, batchgen's key names);
each method gets the same thing here, so a new sampling feature is added in these three functions.

Seeds: batchgen gives every row its own seed (`row_seed(job seed, row id)`, so a retried row samples
the same way); with temperature > 0 the raw loop and run_batch get the same per-row seeds, one
SamplingParams per prompt, as a user reproducing batchgen's output would write it. Greedy rows need none.
"""

from __future__ import annotations

from typing import Any

from batchgen.run.prompts import row_seed

# The sampling keys each method below knows how to pass on; anything else is refused, not dropped.
KNOWN = {"temperature", "n"}
JOB_SEED = 0


def _check(sampling: dict) -> None:
    unknown = sorted(set(sampling) - KNOWN)
    if unknown:
        raise ValueError(f"workload sampling keys {unknown} are not mapped to the raw loop and run_batch "
                         f"(benchmarks/sampling.py knows {sorted(KNOWN)})")


def seeded(sampling: dict) -> bool:
    return float(sampling.get("temperature", 0.0)) > 0


def job_sampling(sampling: dict, max_tokens: int) -> dict[str, Any]:
    """The job file's `sampling:` section."""
    _check(sampling)
    return {"temperature": 0.0, **sampling, "max_tokens": max_tokens, "ignore_eos": True, "seed": JOB_SEED}


def raw_params(sampling: dict, max_tokens: int, ids: list[str]) -> Any:
    """SamplingParams for `LLM.generate`: one for all prompts, or one per prompt with its row's seed."""
    from vllm import SamplingParams

    _check(sampling)
    base = {"temperature": 0.0, **sampling, "max_tokens": max_tokens, "ignore_eos": True}
    if not seeded(sampling):
        return SamplingParams(**base)
    return [SamplingParams(**base, seed=row_seed(JOB_SEED, i)) for i in ids]


def request_body(sampling: dict, max_tokens: int, model: str, prompt: str, row_id: str) -> dict[str, Any]:
    """An OpenAI chat-completions body (vLLM's extensions: ignore_eos, seed) for run_batch."""
    _check(sampling)
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}],
                            "max_tokens": max_tokens, "temperature": float(sampling.get("temperature", 0.0)),
                            "ignore_eos": True}
    if int(sampling.get("n", 1)) > 1:
        body["n"] = int(sampling["n"])
    if seeded(sampling):
        body["seed"] = row_seed(JOB_SEED, row_id)
    return body
