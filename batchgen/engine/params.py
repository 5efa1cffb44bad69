"""vLLM options beyond plain sampling: structured outputs, logprobs, choice scores; and what comes back, as plain data.

    engine_options    EngineArgs the spec implies (the grammar backend's config object, max_logprobs)
    check_request     before the engine starts: the job's constraint compiles, its logprobs fit (exit 2)
    RequestExtras     per request: the SamplingParams keywords, then the Completion fields from the output
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable

from batchgen.engine.choices import ChoiceTokens
from batchgen.errors import SpecError
from batchgen.job.spec import JobSpec, SamplingSpec
from batchgen.job.structured import StructuredSpec

VLLM_MAX_LOGPROBS = 20  # vLLM's default ModelConfig.max_logprobs


def structured_params(st: StructuredSpec) -> Any:
    """A fresh StructuredOutputsParams (vLLM rewrites it while validating: never share one between requests)."""
    from vllm.sampling_params import StructuredOutputsParams

    if st.schema_file is not None:
        raise RuntimeError(f"json_schema {st.schema_file!r} was not read before the engine (run.structured.load_schema_file)")
    kind = st.kind
    value = list(st.choice) if kind == "choice" else getattr(st, kind)
    return StructuredOutputsParams(**{"json" if kind == "json_schema" else kind: value})


def engine_options(spec: JobSpec) -> dict[str, Any]:
    """EngineArgs keywords from the spec beyond engine_args_dict: they replace those keys there."""
    out: dict[str, Any] = {}
    config = structured_config(spec)
    if config is not None:
        out["structured_outputs_config"] = config
    needed = _logprobs_needed(spec.sampling)
    if needed > VLLM_MAX_LOGPROBS and "max_logprobs" not in spec.model.engine_kwargs:
        out["max_logprobs"] = needed
    return out


def structured_config(spec: JobSpec) -> Any:
    """vLLM's StructuredOutputsConfig from model.structured_backend and engine_kwargs.structured_outputs_config
    (a mapping: EngineArgs takes only the object); None leaves vLLM's default."""
    from vllm.config import StructuredOutputsConfig

    given = spec.model.engine_kwargs.get("structured_outputs_config")
    if given is None and spec.model.structured_backend == "auto":
        return None
    if not isinstance(given, (dict, type(None))):
        return given  # already the object (a job built in Python)
    try:
        return StructuredOutputsConfig(**{"backend": spec.model.structured_backend, **(given or {})})
    except Exception as e:  # noqa: BLE001 - pydantic's ValidationError or TypeError (an unknown field)
        msg = e.errors()[0]["msg"] if hasattr(e, "errors") else str(e)
        raise SpecError(f"invalid structured outputs config: {msg.removeprefix('Value error, ')[:300]}",
                        where="model.engine_kwargs.structured_outputs_config",
                        fix="fields of vLLM's StructuredOutputsConfig: backend, disable_any_whitespace (xgrammar/guidance), "
                            "disable_additional_properties (guidance), ...") from None


def _logprobs_needed(s: SamplingSpec) -> int:
    return max(s.logprobs or 0, s.prompt_logprobs or 0)


def check_request(spec: JobSpec, tokenizer: Any) -> None:
    """What add_request would refuse for every row, refused now: the constraint (compiled by vLLM's own
    check, the backend's fallbacks included) and logprobs above an engine_kwargs.max_logprobs."""
    cap = spec.model.engine_kwargs.get("max_logprobs")
    if isinstance(cap, int) and cap != -1 and _logprobs_needed(spec.sampling) > cap:
        raise SpecError(f"sampling asks for {_logprobs_needed(spec.sampling)} logprobs; model.engine_kwargs.max_logprobs is {cap}",
                        where="sampling.logprobs", fix="lower sampling.logprobs/prompt_logprobs or raise max_logprobs")
    config = structured_config(spec)
    st = spec.sampling.structured
    if st is None or st.schema_file is not None:  # a schema file that could not be read is reported where it was read
        return
    from vllm import SamplingParams
    from vllm.config import StructuredOutputsConfig

    config = config or StructuredOutputsConfig()
    try:
        params = SamplingParams(structured_outputs=structured_params(st))
        # The check add_request runs (SamplingParams.verify); it reads only is_diffusion of the model config.
        params._validate_structured_outputs(SimpleNamespace(is_diffusion=False), config, tokenizer)
    except AttributeError:  # another vLLM's private API: add_request still checks each row
        return
    except Exception as e:  # noqa: BLE001 - ValueError (0.26), VLLMValidationError (0.32, not a ValueError), ...
        raise SpecError(f"vLLM ({config.backend} backend) cannot use this constraint: {str(e).splitlines()[0][:400]}",
                        where=f"sampling.structured.{st.kind}",
                        fix="fix the constraint, or choose another model.structured_backend") from None


class RequestExtras:
    """For one engine: what each request asks beyond text, and those parts of its output as Completion fields."""

    def __init__(self, tokenizer: Callable[[], Any], vocab_size: int):
        self._tokenizer, self._vocab_size = tokenizer, vocab_size
        self._choices: ChoiceTokens | None = None
        self._asks: dict[str, SamplingSpec] = {}

    def choices(self) -> ChoiceTokens:
        if self._choices is None:  # ~1 s for a 128k vocabulary
            self._choices = ChoiceTokens.for_tokenizer(self._tokenizer(), self._vocab_size)
        return self._choices

    def prepare(self, s: SamplingSpec) -> None:
        """Before the first request: a job that scores choices builds its token table now, with the engine's
        start, not inside its first step (on the H200 that second cost CH's first rows; docs/structured.md)."""
        if s.choice_scores:
            self.choices()

    def kwargs(self, s: SamplingSpec) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if s.structured is not None:
            kw["structured_outputs"] = structured_params(s.structured)
        if s.logprobs is not None:
            kw["logprobs"] = s.logprobs
        if s.prompt_logprobs is not None:
            kw["prompt_logprobs"] = s.prompt_logprobs
        if _scores(s):
            kw["logprob_token_ids"] = self.choices().ids(s.structured.choice)
        return kw

    def track(self, key: str, s: SamplingSpec) -> None:
        if s.logprobs is not None or s.prompt_logprobs is not None or _scores(s):
            self._asks[key] = s

    def forget(self, keys: list[str]) -> None:
        for key in keys:
            self._asks.pop(key, None)

    def collect(self, out: Any) -> dict[str, Any]:
        """Completion fields for a finished vLLM RequestOutput (none unless its request asked)."""
        s = self._asks.pop(out.request_id, None)
        if s is None:
            return {}
        fields: dict[str, Any] = {}
        if s.logprobs is not None:
            fields["logprobs"] = [token_logprobs(c.token_ids, c.logprobs or [], s.logprobs) for c in out.outputs]
            fields["cumulative_logprobs"] = [c.cumulative_logprob for c in out.outputs]
        if s.prompt_logprobs is not None and out.prompt_logprobs is not None:
            ids = list(out.prompt_token_ids or [])
            fields["prompt_logprobs"] = [{"token": None, "token_id": ids[0], "logprob": None, "rank": None, "top_logprobs": None}] \
                + token_logprobs(ids[1:], out.prompt_logprobs[1:], s.prompt_logprobs)
        first = out.outputs[0].logprobs if out.outputs else None
        if _scores(s) and first:
            fields["label_scores"] = self.choices().scores(s.structured.choice, first[0])
        return fields


def _scores(s: SamplingSpec) -> bool:
    return s.choice_scores and s.structured is not None and s.structured.choice is not None


def token_logprobs(token_ids: Any, positions: Any, k: int) -> list[dict[str, Any]]:
    """Per token: itself (logprob, vocabulary rank) and its position's top-k, most likely first."""
    out = []
    for tid, d in zip(token_ids, positions):
        me = d.get(tid)
        top = sorted((r.rank, i, r) for i, r in d.items() if r.rank is not None and r.rank <= k)
        out.append({"token": me.decoded_token if me else None, "token_id": tid, "logprob": me.logprob if me else None,
                    "rank": me.rank if me else None,
                    "top_logprobs": [{"token": r.decoded_token, "token_id": i, "logprob": r.logprob} for _, i, r in top]})
    return out

