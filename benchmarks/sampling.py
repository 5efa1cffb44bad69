"""One workload's sampling, three ways: batchgen's job `sampling:`, the raw loop's SamplingParams, and
the body of a run_batch request. A workload says it once (`Workload.sampling`, batchgen's key names);
each method gets the same thing here, so a new sampling feature is added in these three functions.

Seeds: batchgen gives every row its own seed (`row_seed(job seed, row id)`, so a retried row samples
the same way); with temperature > 0 the raw loop and run_batch get the same per-row seeds, one
SamplingParams per prompt, as a user reproducing batchgen's output would write it. Greedy rows need none.

Structured workloads (`structured: {choice: [...]}` or `{json_schema: {...}}`, optionally `choice_scores`)
end where their grammar does, so ignore_eos is off for them; the raw loop gets vLLM's
StructuredOutputsParams and, for label scores, the logprobs of the same token ids batchgen asks for;
run_batch gets vLLM's `structured_outputs` extension (label scores have no run_batch equivalent).
"""

from __future__ import annotations

from typing import Any

from batchgen.run.prompts import row_seed

# The sampling keys each method below knows how to pass on; anything else is refused, not dropped.
KNOWN = {"temperature", "n", "structured", "choice_scores"}
JOB_SEED = 0


def _check(sampling: dict) -> None:
    unknown = sorted(set(sampling) - KNOWN)
    if unknown:
        raise ValueError(f"workload sampling keys {unknown} are not mapped to the raw loop and run_batch "
                         f"(benchmarks/sampling.py knows {sorted(KNOWN)})")


def seeded(sampling: dict) -> bool:
    return float(sampling.get("temperature", 0.0)) > 0


def structured(sampling: dict) -> bool:
    return bool(sampling.get("structured"))


def job_sampling(sampling: dict, max_tokens: int) -> dict[str, Any]:
    """The job file's `sampling:` section."""
    _check(sampling)
    return {"temperature": 0.0, **sampling, "max_tokens": max_tokens, "ignore_eos": not structured(sampling),
            "seed": JOB_SEED}


def _structured_params(sampling: dict, llm: Any) -> dict[str, Any]:
    """The SamplingParams keys a user writes by hand for a structured workload."""
    from vllm.sampling_params import StructuredOutputsParams

    kind, value = next(iter(sampling["structured"].items()))
    out: dict[str, Any] = {"structured_outputs": StructuredOutputsParams(**{"json" if kind == "json_schema" else kind: value})}
    if sampling.get("choice_scores"):  # the token ids batchgen asks for (computed before the timed loop)
        from batchgen.engine.choices import ChoiceTokens

        vocab = llm.llm_engine.vllm_config.model_config.get_vocab_size()
        out["logprob_token_ids"] = ChoiceTokens.for_tokenizer(llm.get_tokenizer(), vocab).ids(value)
    return out


def raw_params(sampling: dict, max_tokens: int, ids: list[str], llm: Any = None) -> Any:
    """SamplingParams for `LLM.generate`: one for all prompts, or one per prompt with its row's seed."""
    from vllm import SamplingParams

    _check(sampling)
    plain = {k: v for k, v in sampling.items() if k not in ("structured", "choice_scores")}
    base = {"temperature": 0.0, **plain, "max_tokens": max_tokens, "ignore_eos": not structured(sampling)}
    if structured(sampling):
        base.update(_structured_params(sampling, llm))
    if not seeded(sampling):
        return SamplingParams(**base)
    return [SamplingParams(**base, seed=row_seed(JOB_SEED, i)) for i in ids]


def request_body(sampling: dict, max_tokens: int, model: str, prompt: str, row_id: str) -> dict[str, Any]:
    """An OpenAI chat-completions body (vLLM's extensions: ignore_eos, seed) for run_batch."""
    _check(sampling)
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}],
                            "max_tokens": max_tokens, "temperature": float(sampling.get("temperature", 0.0)),
                            "ignore_eos": not structured(sampling)}
    if sampling.get("choice_scores"):
        raise ValueError("label scores (choice_scores) have no run_batch equivalent: run this workload without run_batch")
    if structured(sampling):
        kind, value = next(iter(sampling["structured"].items()))
        body["structured_outputs"] = {"json" if kind == "json_schema" else kind: value}
    if int(sampling.get("n", 1)) > 1:
        body["n"] = int(sampling["n"])
    if seeded(sampling):
        body["seed"] = row_seed(JOB_SEED, row_id)
    return body
