"""The model's tokenizer, loaded without starting an engine (validate and the reader both need it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batchgen.errors import SpecError
from batchgen.job.spec import ModelSpec

# Modules whose tokenizer classes encode through the Rust backend and nothing else (transformers 4 and 5).
_PLAIN_FAST = ("transformers.tokenization_utils_fast", "transformers.tokenization_utils_tokenizers")


def load_tokenizer(model: ModelSpec) -> Any:
    """A Hugging Face fast tokenizer for `model` (its own `tokenizer` if set)."""
    from transformers import AutoTokenizer

    for key, value in (("model.path", model.path), ("model.tokenizer", model.tokenizer)):
        if value and value.startswith(("/", "./", "../", "~")) and not Path(value).expanduser().is_dir():
            raise SpecError(f"model folder not found: {value}", where=key,
                            fix="check the path (relative paths starting with ./ are relative to the job file), or use a Hugging Face id")
    name = model.tokenizer or model.path
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=model.trust_remote_code)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds; all mean "cannot load it"
        raise SpecError(f"cannot load the tokenizer of {name!r}: {str(e).splitlines()[0][:300]}", where="model.path",
                        fix="point model.path at a model folder with tokenizer files (or an id in the local HF cache)") from e


def encode_ids(tok: Any, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    """`tok(texts, add_special_tokens=...)["input_ids"]`, straight from the Rust tokenizer when that gives the
    same ids: transformers then turns every encoding into a dict of lists in Python, about half the
    tokenizer's cost on 256-token prompts (py-spy, docs/benchmarks.md) and GIL time the engine loop waits for.

    The direct call is taken only for a plain fast tokenizer (no Python override of its encoding), whose
    backend has no truncation or padding set (transformers clears both on every call that asks for
    neither) and splits special tokens as transformers would; anything else goes through transformers.
    """
    backend = getattr(tok, "backend_tokenizer", None)
    encode = getattr(tok, "_encode_plus", None) or getattr(tok, "_batch_encode_plus", None)
    plain = (backend is not None and encode is not None and getattr(encode, "__module__", "") in _PLAIN_FAST
             and backend.truncation is None and backend.padding is None
             and bool(getattr(backend, "encode_special_tokens", False)) == bool(getattr(tok, "split_special_tokens", False)))
    if not plain:
        return tok(texts, add_special_tokens=add_special_tokens)["input_ids"]
    fast = getattr(backend, "encode_batch_fast", backend.encode_batch)  # tokenizers >= 0.21: no offsets computed
    return [e.ids for e in fast(texts, add_special_tokens=add_special_tokens)]
# Where processors name the text that stands for one image (transformers writes processor_config.json
# since v5, preprocessor_config.json before; some tokenizers carry it themselves).
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json")


def image_placeholder(model: ModelSpec, tokenizer: Any = None) -> str | None:
    """The model's image placeholder (`<image>` for LLaVA), or None if its files do not say."""
    import json

    folder = Path(model.tokenizer or model.path).expanduser()
    for name in _PROCESSOR_FILES:
        try:
            token = json.loads((folder / name).read_text()).get("image_token")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(token, str) and token:
            return token
    token = getattr(tokenizer, "image_token", None)
    return token if isinstance(token, str) and token else None
