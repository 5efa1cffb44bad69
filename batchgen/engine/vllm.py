"""The real engine: vLLM's LLMEngine, fed continuously (requests added between steps).

We hand vLLM token ids (tokenized off the engine's thread by the reader) and ask only for final
outputs, so each step returns just the requests that finished.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from batchgen.engine.base import Completion, EngineInfo, Request
from batchgen.engine.dims import read_dims
from batchgen.engine.params import RequestExtras, engine_options
from batchgen.errors import SpecError
from batchgen.job.spec import JobSpec, ModelSpec, SamplingSpec

log = logging.getLogger("batchgen.engine")

# Sequences per step on a GPU when model.max_num_seqs is unset: 512, or 1024 for models below
# SMALL_MODEL_PARAMS parameters, whose steps are short enough that a larger batch pays (H200, vLLM 0.26,
# the 0.6B shape: 344.6 against 275.5 req/s, docs/benchmarks.md, session 6). vLLM captures CUDA graphs for
# batches up to 512 unless told otherwise, and a larger batch runs without them (slower than 512 with
# them), so batchgen raises the capture size to max_num_seqs (engine_kwargs may set their own).
GPU_DEFAULT_MAX_NUM_SEQS = 512
SMALL_MODEL_MAX_NUM_SEQS = 1024
SMALL_MODEL_PARAMS = 1e9
VLLM_MAX_CAPTURE = 512
CAPTURE_KWARGS = ("max_cudagraph_capture_size", "cudagraph_capture_sizes", "compilation_config")
# Adapter slots in one batch when model.max_loras is unset: each slot takes GPU memory (rank x layers).
DEFAULT_MAX_LORAS = 8


def engine_args_dict(model: ModelSpec, *, on_gpu: bool) -> dict[str, Any]:
    """vLLM EngineArgs keyword arguments from the spec (unset fields keep vLLM's defaults)."""
    args: dict[str, Any] = {
        "model": model.path,
        "tokenizer": model.tokenizer,
        "dtype": model.dtype,
        "quantization": model.quantization,
        "max_model_len": model.max_model_len,
        "gpu_memory_utilization": model.gpu_memory_utilization,
        "tensor_parallel_size": model.tensor_parallel_size,
        "trust_remote_code": model.trust_remote_code,
        "max_num_seqs": model.max_num_seqs or (gpu_default_max_num_seqs(model.path) if on_gpu else None),
        "max_num_batched_tokens": model.max_num_batched_tokens,
        "enable_prefix_caching": model.enable_prefix_caching,
        "enable_chunked_prefill": model.enable_chunked_prefill,
        "enforce_eager": model.enforce_eager,
        "load_format": model.load_format,
        "disable_log_stats": True,
    }
    args = {k: v for k, v in args.items() if v is not None}
    seqs = args.get("max_num_seqs") or 0
    if on_gpu and seqs > VLLM_MAX_CAPTURE and not model.enforce_eager and not set(CAPTURE_KWARGS) & set(model.engine_kwargs):
        args["max_cudagraph_capture_size"] = seqs
    return {**args, **lora_engine_args(model, on_gpu=on_gpu), **model.engine_kwargs}


def gpu_default_max_num_seqs(model_path: str) -> int:
    dims = read_dims(model_path)
    return SMALL_MODEL_MAX_NUM_SEQS if dims is not None and dims.params() < SMALL_MODEL_PARAMS else GPU_DEFAULT_MAX_NUM_SEQS


def lora_engine_args(model: ModelSpec, *, on_gpu: bool) -> dict[str, Any]:
    """LoRA on when the job lists adapters. All of them fit vLLM's CPU-side cache (max_cpu_loras), so an
    adapter loaded before the first row is never evicted and re-read while rows switch between them."""
    if not model.lora:
        return {}
    max_loras = model.max_loras or min(len(model.lora), DEFAULT_MAX_LORAS)
    if not on_gpu:
        # vLLM's CPU LoRA ops (lora/ops/torch_ops) gather adapter weights with the no-adapter index -1,
        # i.e. the last slot: base-model rows batched beside adapter rows get that adapter (vLLM PRs
        # #48421/#49656, open). One slot more than adapters stays empty (zeros), so -1 adds nothing.
        max_loras = max(max_loras, len(model.lora)) + 1
    args: dict[str, Any] = {"enable_lora": True, "max_loras": max_loras, "max_cpu_loras": max(max_loras, len(model.lora))}
    if model.max_lora_rank:
        args["max_lora_rank"] = model.max_lora_rank
    return args


# Options with a named field in ModelSpec: engine_kwargs must not set them a second way.
NAMED_ENGINE_FIELDS = frozenset(set(ModelSpec.model_fields) - {"path", "engine_kwargs"} | {"model"})


def check_engine_kwargs(model: ModelSpec) -> None:
    """Unknown engine_kwargs fail before the engine starts, naming the key and close matches."""
    import difflib

    from vllm.engine.arg_utils import EngineArgs

    clash = sorted(set(model.engine_kwargs) & NAMED_ENGINE_FIELDS)
    if clash:
        raise SpecError(f"model.engine_kwargs repeats named field(s) {', '.join(clash)}",
                        where="model.engine_kwargs", fix=f"set them as model.{clash[0]} instead")
    names = {f.name for f in dataclasses.fields(EngineArgs)}
    for key in model.engine_kwargs:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=3)
            raise SpecError(f"unknown vLLM engine option {key!r}", where="model.engine_kwargs",
                            fix=f"did you mean {', '.join(close)}?" if close else "see vLLM's EngineArgs for option names")


def check_sampling_extra(sampling: SamplingSpec) -> None:
    from vllm import SamplingParams

    names = set(SamplingParams.__struct_fields__) if hasattr(SamplingParams, "__struct_fields__") else set()
    for key in sampling.extra:
        if names and key not in names:
            raise SpecError(f"unknown vLLM sampling option {key!r}", where="sampling.extra",
                            fix="see vLLM's SamplingParams for option names")


def output_args(log_level: str | None) -> dict[str, Any]:
    """EngineArgs for vLLM's own output at `log_level`. 0.32 has a `log_level` field, applied in the
    engine's processes too (it re-configures logging when the engine starts, so a level set beforehand
    is lost). 0.26 has none: it reads VLLM_LOGGING_LEVEL once at import (the CLI sets it first), so only
    this process's vllm logger can still be set here. Above INFO, no weight-loading bar either."""
    from vllm.engine.arg_utils import EngineArgs

    if log_level is None:
        return {}
    level = log_level.upper()
    args: dict[str, Any] = {} if level in ("DEBUG", "INFO") else {"use_tqdm_on_load": False}
    if "log_level" in {f.name for f in dataclasses.fields(EngineArgs)}:
        return {**args, "log_level": level}
    logging.getLogger("vllm").setLevel(level)
    return args


class VllmEngine:
    def __init__(self, spec: JobSpec, log_level: str | None = None):
        import vllm
        from vllm.engine.arg_utils import EngineArgs
        from vllm.platforms import current_platform
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.llm_engine import LLMEngine

        check_engine_kwargs(spec.model)
        check_sampling_extra(spec.sampling)
        on_gpu = current_platform.is_cuda_alike()
        t0 = time.monotonic()
        # Offline batch work gets the defaults vLLM gives its own LLM class: on an H100/H200 that is
        # max_num_batched_tokens 16384, not the 2048 of the plain engine context (prefill 8x slower).
        args = {**output_args(log_level), **engine_args_dict(spec.model, on_gpu=on_gpu), **engine_options(spec)}  # engine_kwargs win
        self._engine = LLMEngine.from_engine_args(EngineArgs(**args), usage_context=UsageContext.LLM_CLASS)
        started = time.monotonic() - t0
        cfg = self._engine.vllm_config
        self.info = EngineInfo(
            kind="vllm", version=vllm.__version__, device=_device_name(current_platform),
            model=spec.model.path, max_model_len=cfg.model_config.max_model_len,
            max_num_seqs=cfg.scheduler_config.max_num_seqs, start_seconds=started, options=effective_options(cfg),
        )
        try:
            from vllm.exceptions import VLLMValidationError
        except ImportError:  # older vLLM raised ValueError
            VLLMValidationError = ValueError  # noqa: N806
        self._validation_error = VLLMValidationError
        self._live: set[str] = set()
        # Structured outputs, logprobs and choice scores: request keywords in, Completion fields out.
        self._extras = RequestExtras(self._engine.get_tokenizer, cfg.model_config.get_vocab_size())
        self._extras.prepare(spec.sampling)
        self._loras = self._load_adapters(spec.model.lora)

    def _load_adapters(self, adapters: dict[str, str]) -> dict[str, Any]:
        """Every adapter, loaded once now: a broken folder fails the job before a row is taken (vLLM
        would otherwise load it lazily, at the first batch that uses it)."""
        from vllm.lora.request import LoRARequest

        loaded = {}
        for lora_id, (name, folder) in enumerate(sorted(adapters.items()), start=1):
            req = LoRARequest(name, lora_id, folder)
            try:
                ok, why = bool(self._engine.add_lora(req)), "vLLM refused it"
            except Exception as e:  # noqa: BLE001 - vLLM raises many kinds (and a plain Exception across processes)
                ok, why = False, " ".join(str(e).split())[:500]
            if not ok:
                self.close()
                raise SpecError(f"LoRA adapter {name!r} cannot be loaded from {folder}: {why}", where=f"model.lora.{name}",
                                fix="a PEFT LoRA folder for this base model (adapter_config.json + adapter_model.safetensors), "
                                    "rank at most model.max_lora_rank, targeting the model's linear layers")
            loaded[name] = req
        return loaded

    @property
    def max_prompt_tokens(self) -> int | None:
        return self.info.max_model_len - 1 if self.info.max_model_len else None

    def params(self, s: SamplingSpec, seed: int):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            n=s.n, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k if s.top_k > 0 else -1, min_p=s.min_p,
            max_tokens=s.max_tokens, min_tokens=s.min_tokens, presence_penalty=s.presence_penalty,
            frequency_penalty=s.frequency_penalty, repetition_penalty=s.repetition_penalty,
            stop=s.stop or None, stop_token_ids=s.stop_token_ids or None, ignore_eos=s.ignore_eos,
            skip_special_tokens=s.skip_special_tokens, seed=seed, output_kind=RequestOutputKind.FINAL_ONLY,
            **s.extra, **self._extras.kwargs(s),
        )

    def add(self, req: Request) -> str | None:
        lora = self._loras.get(req.lora) if req.lora else None
        if req.lora and lora is None:
            return f"unknown LoRA adapter {req.lora!r} (loaded: {', '.join(sorted(self._loras)) or 'none'})"
        try:
            prompt = self._prompt(req)
        except Exception as e:  # noqa: BLE001 - the model's image processor raises many kinds: this row's error
            return f"rejected by vLLM's image processing: {' '.join(str(e).split())[:500]}"
        try:
            self._engine.add_request(req.key, prompt, self.params(req.sampling, req.seed), lora_request=lora)
        except (ValueError, TypeError, self._validation_error) as e:
            return f"rejected by vLLM: {e}"
        self._live.add(req.key)
        self._extras.track(req.key, req.sampling)
        return None

    def _prompt(self, req: Request) -> Any:
        """Token ids; with images, vLLM's own rendering of ids + images (it expands each placeholder id into
        the image's feature tokens and runs the model's image processor on the decoded images)."""
        if not req.images:
            # vLLM's own input type for token ids (0.26 and 0.32): a plain {"prompt_token_ids": ...} dict is a
            # "raw prompt", deprecated (a warning) and re-rendered on every add.
            from vllm.inputs import tokens_input

            return tokens_input(req.token_ids)
        images, req.images = req.images, None  # vLLM keeps its processed copy: the row need not hold the pixels
        (engine_input,) = self._engine.renderer.render_cmpl(
            [{"prompt_token_ids": req.token_ids, "multi_modal_data": {"image": images}}])
        return engine_input

    def step(self) -> list[Completion]:
        done = []
        for out in self._engine.step():
            if not out.finished:
                continue
            self._live.discard(out.request_id)
            done.append(Completion(
                key=out.request_id,
                texts=[c.text for c in out.outputs],
                finish_reasons=[str(c.finish_reason) for c in out.outputs],
                output_tokens=[len(c.token_ids) for c in out.outputs],
                prompt_tokens=len(out.prompt_token_ids or []),
                cached_tokens=out.num_cached_tokens or 0,
                **self._extras.collect(out),
            ))
        return done

    def in_flight(self) -> int:
        return len(self._live)

    def abort_all(self) -> list[str]:
        keys = sorted(self._live)
        if keys:
            self._engine.abort_request(keys)
        self._live.clear()
        self._extras.forget(keys)
        return keys

    def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None and hasattr(engine, "engine_core"):
            engine.engine_core.shutdown()


def effective_options(cfg: Any) -> dict[str, Any]:
    """The options an engine runs with, read back from its VllmConfig after vLLM resolved its defaults
    (the platform's batch sizes, async scheduling, CUDA-graph sizes): recorded in the run's summary, and
    what the benchmark's hand-written loop is given so that both run on the same settings."""
    sched, cache, comp, model = cfg.scheduler_config, cfg.cache_config, cfg.compilation_config, cfg.model_config
    sizes = getattr(comp, "cudagraph_capture_sizes", None)
    blocks, block_size = getattr(cache, "num_gpu_blocks", None), getattr(cache, "block_size", None)
    return {
        "max_num_seqs": sched.max_num_seqs,
        "max_num_batched_tokens": sched.max_num_batched_tokens,
        "async_scheduling": getattr(sched, "async_scheduling", None),
        "enable_chunked_prefill": getattr(sched, "enable_chunked_prefill", None),
        "stream_interval": getattr(sched, "stream_interval", None),
        "gpu_memory_utilization": cache.gpu_memory_utilization,
        "kv_cache_memory_bytes": getattr(cache, "kv_cache_memory_bytes", None),
        "enable_prefix_caching": cache.enable_prefix_caching,
        "block_size": block_size,
        # The KV cache's size in tokens (the engine core reports its blocks once they are allocated): with fewer
        # than max_num_seqs x a row's prompt and completion, vLLM preempts running rows and recomputes them.
        "kv_cache_tokens": blocks * block_size if blocks and block_size else None,
        "cudagraph_capture_sizes": list(sizes or []),
        "max_cudagraph_capture_size": getattr(comp, "max_cudagraph_capture_size", None),
        "cudagraph_mode": str(getattr(comp, "cudagraph_mode", None)),
        "enforce_eager": model.enforce_eager,
        "max_model_len": model.max_model_len,
        "dtype": str(model.dtype).removeprefix("torch."),
    }


def _device_name(platform: Any) -> str:
    try:
        return f"{platform.device_name}: {platform.get_device_name()}"
    except Exception:  # noqa: BLE001 - a name is informative only
        return str(getattr(platform, "device_name", "unknown"))
