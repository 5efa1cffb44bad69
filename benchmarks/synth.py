"""Synthetic inputs: a model folder (config of a real shape, a word-level tokenizer) and Parquet prompts.

The tokenizer maps the word `w<i>` to token id i and adds no special tokens, so a prompt of N words
is exactly N tokens for vLLM and for batchgen alike, and shared prefixes are shared token for token.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.workloads import ModelShape, Workload

SPECIALS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2: never drawn for prompts
# run_batch only takes chat requests: this template renders a one-message chat as its text unchanged, so
# run_batch's prompts are token for token the others' (the tokenizer adds no special tokens either).
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
FOLDER_VERSION = 2  # bump when the files written here change


def _tokenizer_json(vocab: int) -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {t: i for i, t in enumerate(SPECIALS)}
    words.update({f"w{i}": i for i in range(len(SPECIALS), vocab)})
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token=SPECIALS[0]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok.to_str()


def write_model_folder(shape: ModelShape, folder: Path) -> Path:
    """config.json + tokenizer files; no weights (vLLM's `load_format: dummy` makes random ones)."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = folder / ".shape.json"
    want = json.dumps({**shape.config(), "folder_version": FOLDER_VERSION}, sort_keys=True)
    if stamp.exists() and stamp.read_text() == want:
        return folder
    (folder / "config.json").write_text(json.dumps(shape.config(), indent=1))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    (folder / "tokenizer.json").write_text(_tokenizer_json(shape.vocab))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": SPECIALS[0], "bos_token": SPECIALS[1],
        "eos_token": SPECIALS[2], "model_max_length": shape.max_positions, "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }))
    stamp.write_text(want)
    return folder


def _words(ids: np.ndarray) -> str:
    return " ".join(f"w{i}" for i in ids.tolist())


def prompt_texts(wl: Workload, seed: int = 0) -> list[str]:
    """Prompts of exactly wl.prompt_tokens tokens; the first wl.prefix_tokens shared by round-robin groups."""
    rng = np.random.default_rng(seed)
    lo, hi = len(SPECIALS), wl.shape.vocab
    prefixes = [_words(rng.integers(lo, hi, wl.prefix_tokens)) for _ in range(wl.prefixes)] if wl.prefix_tokens else []
    tail = wl.prompt_tokens - wl.prefix_tokens
    texts = []
    for i in range(wl.rows):
        own = _words(rng.integers(lo, hi, tail))
        texts.append(f"{prefixes[i % len(prefixes)]} {own}" if prefixes else own)
    if wl.shuffle:
        texts = [texts[i] for i in rng.permutation(len(texts))]
    return texts


def write_prompts(wl: Workload, path: Path, row_group: int = 1024) -> Path:
    """The workload as one Parquet shard with columns id, prompt (rebuilt only if the workload changed)."""
    stamp = path.with_suffix(".workload.json")
    if path.exists() and stamp.exists() and stamp.read_text() == wl.fingerprint():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    texts = prompt_texts(wl)
    table = pa.table({"id": pa.array([f"r{i:07d}" for i in range(len(texts))]), "prompt": pa.array(texts)})
    pq.write_table(table, path, row_group_size=row_group)
    stamp.write_text(wl.fingerprint())
    return path


def write_requests(wl: Workload, prompts: Path, model: Path, path: Path) -> Path:
    """The prompts as an OpenAI batch requests file (chat completions), for vLLM's run_batch."""
    from benchmarks.sampling import request_body

    want = json.dumps({"workload": wl.fingerprint(), "model": str(model), "prompts": str(prompts)})
    stamp = path.with_suffix(".workload.json")
    if path.exists() and stamp.exists() and stamp.read_text() == want:
        return path
    table = pq.read_table(prompts, columns=["id", "prompt"]).to_pydict()
    with path.open("w") as f:
        for rid, text in zip(table["id"], table["prompt"]):
            body = request_body(wl.sampling, wl.output_tokens, str(model), text, rid)
            f.write(json.dumps({"custom_id": rid, "method": "POST", "url": "/v1/chat/completions", "body": body}) + "\n")
    stamp.write_text(want)
    return path
