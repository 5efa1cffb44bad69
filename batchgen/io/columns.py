"""The optional output columns (structured outputs, logprobs, scores): their Arrow types and which settings add them.

Off by default: a job gets a column only when it asks for what fills it (schemas/output.md lists them).
Per-completion fields sit at the top level for the first completion, and in the `completions` structs
when a row has several.
"""

from __future__ import annotations

import pyarrow as pa

from batchgen.job.spec import JobSpec

TOP_LOGPROB = pa.struct([("token", pa.string()), ("token_id", pa.int32()), ("logprob", pa.float32())])
# One token: the token itself (its logprob and its rank in the whole vocabulary, 1 = most likely) and the
# K most likely tokens at its position. vLLM computes logprobs in float32, so float32 keeps them exactly.
TOKEN_LOGPROB = pa.struct([("token", pa.string()), ("token_id", pa.int32()), ("logprob", pa.float32()),
                           ("rank", pa.int32()), ("top_logprobs", pa.list_(TOP_LOGPROB))])
LOGPROBS = pa.list_(TOKEN_LOGPROB)


def _structured_kinds(spec: JobSpec) -> set[str]:
    """The constraint kinds a row of this job may run with (the job's, and those per-row columns set)."""
    s = spec.sampling
    kinds = {s.structured.kind} if s.structured else set()
    kinds |= {"json_schema" for f in ("structured_schema", "json_object") if f in s.per_row}
    return kinds | ({"choice"} if "choices" in s.per_row else set())


def completion_fields(spec: JobSpec) -> list[pa.Field]:
    """Fields of each completion beyond text, finish_reason and output_tokens."""
    s, kinds = spec.sampling, _structured_kinds(spec)
    out = []
    if "choice" in kinds:
        out.append(pa.field("label", pa.string()))
    if kinds & {"json_schema", "json_object"}:
        out.append(pa.field("parsed", pa.string()))
    if s.logprobs is not None or "logprobs" in s.per_row:
        out += [pa.field("logprobs", LOGPROBS), pa.field("cumulative_logprob", pa.float64())]
    return out


def row_fields(spec: JobSpec) -> list[pa.Field]:
    """Per-row fields beyond the completions: label scores, prompt logprobs, scoring-mode sums."""
    out = []
    if spec.sampling.choice_scores:
        out.append(pa.field("label_scores", pa.map_(pa.string(), pa.float64())))
    if spec.sampling.prompt_logprobs is not None:
        out.append(pa.field("prompt_logprobs", LOGPROBS))
    if spec.prompt.score_column:
        out += [pa.field("score_tokens", pa.int32()), pa.field("logprob_sum", pa.float64()),
                pa.field("logprob_mean", pa.float64()), pa.field("perplexity", pa.float64())]
    return out


# Every optional column's name: a passthrough column of the same name is not copied over it.
OPTIONAL = frozenset({"label", "parsed", "logprobs", "cumulative_logprob", "label_scores", "prompt_logprobs",
                      "score_tokens", "logprob_sum", "logprob_mean", "perplexity"})
