"""The model's tokenizer, loaded without starting an engine (validate and the reader both need it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batchgen.errors import SpecError
from batchgen.job.spec import ModelSpec


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
