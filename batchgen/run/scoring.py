"""Scoring mode (`prompt.score_column`): existing text scored with vLLM's prompt logprobs, nothing generated.

    tokens   the context (the rendered prompt, if the job has one) + the column's text, tokenized on its own
             and appended (so a continuation of a sentence should carry its leading space)
    scored   every position from `Request.score_from`: with a context, exactly the text's tokens; alone,
             every token after the first prompt token (vLLM gives position 0 no logprob), which with a
             BOS-adding tokenizer is every token of the text, without one (e.g. Qwen) all but its first
    columns  score_tokens, logprob_sum, logprob_mean, perplexity = exp(-logprob_mean)

Each request asks for max_tokens 1 (vLLM must generate something) and prompt_logprobs (0 unless the job
asks for more: the logprob of each actual token only). vLLM does not read the prefix cache for a
request with prompt logprobs, so a scoring job prefills every prompt in full.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from batchgen.engine.base import Request
from batchgen.job.spec import SamplingSpec


def score_sampling(s: SamplingSpec) -> SamplingSpec:
    """The sampling a scoring row runs with: one token, one completion, prompt logprobs on."""
    return s.model_copy(update={"max_tokens": 1, "min_tokens": 0, "n": 1,
                                "prompt_logprobs": s.prompt_logprobs if s.prompt_logprobs is not None else 0})


def append_texts(reqs: Sequence[Request], texts: Sequence[Any], column: str, tokenizer: Any, limit: int | None) -> None:
    """Append each row's text to score to its (context) tokens, and mark where scoring starts."""
    todo = []
    for req, text in zip(reqs, texts):
        if req.error is not None:
            continue
        if not isinstance(text, str) or not text.strip():
            req.error = (f"empty text to score: column {column!r} is "
                         + ("null" if text is None else "blank" if isinstance(text, str) else f"{type(text).__name__}, not text"))
            continue
        todo.append((req, text))
    if not todo:
        return
    encoded = tokenizer([t for _, t in todo], add_special_tokens=False)["input_ids"]
    for (req, _), ids in zip(todo, encoded):
        start = max(len(req.token_ids), 1)
        req.token_ids = req.token_ids + list(ids)
        if limit is not None and len(req.token_ids) > limit:
            req.error = (f"prompt has {len(req.token_ids)} tokens; the model takes at most {limit} "
                         f"(max_model_len minus 1 generated token)")
        elif len(req.token_ids) <= start:
            req.error = f"nothing to score: the text in column {column!r} is a single token and there is no token before it"
        else:
            req.score_from = start


def score_columns(prompt_logprobs: Sequence[dict[str, Any]], start: int) -> dict[str, Any]:
    """Total and mean logprob and perplexity of the prompt positions from `start` on."""
    values = [p["logprob"] for p in prompt_logprobs[start:]]
    total = math.fsum(values)
    mean = total / len(values) if values else None
    return {"score_tokens": len(values), "logprob_sum": total if values else None, "logprob_mean": mean,
            "perplexity": None if mean is None else (math.exp(-mean) if -mean < 709 else math.inf)}
