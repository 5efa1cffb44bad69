"""The model a job names, as the engine and the tokenizer load it: local folders only.

Object-store URLs (model.path, model.tokenizer, model.lora adapters) become their copies in the
local cache (models.cache); LoRA adapters are checked (PEFT files, rank) before the engine starts,
and the LoRA rank vLLM must reserve is taken from them when the job does not set it.
"""

from __future__ import annotations

import json
from pathlib import Path

from batchgen.errors import SpecError
from batchgen.job.spec import ModelSpec
from batchgen.models.cache import TOKENIZER_FILES, ensure_local, is_remote

# The values vLLM's max_lora_rank takes (EngineArgs' Literal, 0.26 and 0.32).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def local_model(model: ModelSpec, cache_root: str | None, *, tokenizer_only: bool = False) -> ModelSpec:
    """`model` with every object-store URL replaced by its local copy (copied now if needed).

    `tokenizer_only` (validate): only the files a tokenizer needs are copied, into a cache entry of their
    own, and adapters are left alone.
    """
    updates: dict = {}
    for key in ("path", "tokenizer"):
        url = getattr(model, key)
        if is_remote(url):
            root = _cache_root(cache_root, f"model.{key}")
            subset = ("tokenizer", TOKENIZER_FILES) if tokenizer_only else ("", ())
            updates[key] = str(ensure_local(url, root, model.storage, subset=subset[0], include=subset[1]))
    if model.lora and not tokenizer_only:
        adapters = {name: str(ensure_local(url, _cache_root(cache_root, f"model.lora.{name}"), model.storage))
                    if is_remote(url) else url for name, url in model.lora.items()}
        ranks = {name: adapter_rank(name, folder) for name, folder in adapters.items()}
        updates["lora"] = adapters
        updates["max_lora_rank"] = lora_rank(model.max_lora_rank, ranks)
    return model.model_copy(update=updates) if updates else model


def adapter_rank(name: str, folder: str) -> int:
    """The rank of a PEFT LoRA folder; a folder vLLM could not load fails here, before the engine starts."""
    where = f"model.lora.{name}"
    fix = "point it at a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors), e.g. one saved by peft's save_pretrained"
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise SpecError(f"LoRA adapter folder not found: {folder}", where=where, fix=fix)
    try:
        config = json.loads((path / "adapter_config.json").read_text())
    except OSError:
        raise SpecError(f"{folder} has no adapter_config.json", where=where, fix=fix) from None
    except ValueError as e:
        raise SpecError(f"{folder}/adapter_config.json is not valid JSON: {e}", where=where, fix=fix) from None
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise SpecError(f"{folder} is a {config.get('peft_type')} adapter, not LoRA", where=where, fix=fix)
    if not any((path / w).is_file() for w in ADAPTER_WEIGHTS):
        raise SpecError(f"{folder} has no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})", where=where, fix=fix)
    rank = config.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise SpecError(f"{folder}/adapter_config.json has no valid rank `r` (got {rank!r})", where=where, fix=fix)
    return rank


def lora_rank(given: int | None, ranks: dict[str, int]) -> int:
    """max_lora_rank: the job's (checked against every adapter), else the smallest vLLM value that fits all."""
    largest_name, largest = max(ranks.items(), key=lambda kv: kv[1])
    if given is not None:
        if given not in VLLM_LORA_RANKS:
            raise SpecError(f"model.max_lora_rank {given} is not a value vLLM takes", where="model.max_lora_rank",
                            fix=f"one of {', '.join(map(str, VLLM_LORA_RANKS))}")
        if largest > given:
            raise SpecError(f"LoRA adapter {largest_name!r} has rank {largest}, above model.max_lora_rank {given}",
                            where="model.max_lora_rank", fix=f"raise it to at least {largest}, or leave it unset")
        return given
    fits = [r for r in VLLM_LORA_RANKS if r >= largest]
    if not fits:
        raise SpecError(f"LoRA adapter {largest_name!r} has rank {largest}; vLLM takes at most {VLLM_LORA_RANKS[-1]}",
                        where=f"model.lora.{largest_name}")
    return fits[0]


def _cache_root(cache_root: str | None, key: str) -> str:
    if not cache_root:
        raise SpecError(f"{key} is on an object store, but there is no local cache folder to copy it into",
                        where="runtime.model_cache",
                        fix="set runtime.model_cache to a local folder (the batchgen command defaults it to ~/.cache/batchgen/models)")
    return cache_root
