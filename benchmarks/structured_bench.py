"""Inputs of the structured workloads (CH, JS): a model folder whose tokenizer can write JSON, and its prompts.

synth.py's word-level tokenizer (`w<i>` = token i) has no token for `{` or `"`, so no grammar could be
followed with it. These workloads get a byte-level BPE trained here, deterministically, on random words
up to the shape's full vocabulary (128,256 for the 8B shape: a grammar's per-step mask costs what it
costs with a real tokenizer of that size). Training takes ~20 s once; folder and prompts are cached.
Prompts are random words, cut to the workload's token count (a shared prefix, then each row's own).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.synth import SPECIALS
from benchmarks.workloads import ModelShape, Workload

_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


def _words(rng: np.random.Generator, n: int) -> list[str]:
    """Random lowercase words, letters Zipf-distributed (so BPE finds frequent pieces, as in real text)."""
    lens = rng.integers(2, 9, n)
    chars = _LETTERS[rng.zipf(1.3, int(lens.sum())) % len(_LETTERS)]
    ends = np.cumsum(lens)
    return ["".join(chars[e - k:e]) for e, k in zip(ends, lens)]


def write_bpe_model_folder(shape: ModelShape, folder: Path) -> Path:
    """config.json + a byte-level BPE tokenizer of the shape's vocabulary; no weights (load_format: dummy)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder.mkdir(parents=True, exist_ok=True)
    stamp = folder / ".shape.json"
    want = json.dumps({**shape.config(), "tokenizer": "bpe-v1"}, sort_keys=True)
    if stamp.exists() and stamp.read_text() == want:
        return folder
    rng = np.random.default_rng(0)
    words = _words(rng, min(1_500_000, shape.vocab * 12))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=shape.vocab, special_tokens=list(SPECIALS), min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator((" ".join(words[i:i + 20]) for i in range(0, len(words), 20)), trainer)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "config.json").write_text(json.dumps(shape.config(), indent=1))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": SPECIALS[0], "bos_token": SPECIALS[1],
        "eos_token": SPECIALS[2], "model_max_length": shape.max_positions, "clean_up_tokenization_spaces": False,
    }))
    stamp.write_text(want)
    return folder


def write_bpe_prompts(wl: Workload, model: Path, path: Path, row_group: int = 1024) -> Path:
    """The workload as one Parquet shard (id, prompt): about wl.prompt_tokens tokens each, the first
    wl.prefix_tokens shared by all rows (rebuilt only if the workload changed)."""
    from transformers import AutoTokenizer

    stamp = path.with_suffix(".workload.json")
    if path.exists() and stamp.exists() and stamp.read_text() == wl.fingerprint():
        return path
    tok = AutoTokenizer.from_pretrained(model)
    rng = np.random.default_rng(1)

    def text_of(tokens: int) -> str:
        ids = tok(" ".join(_words(rng, tokens)), add_special_tokens=False)["input_ids"][:tokens]
        return tok.decode(ids)

    prefix = text_of(wl.prefix_tokens) + "\n" if wl.prefix_tokens else ""
    texts = [prefix + text_of(wl.prompt_tokens - wl.prefix_tokens) for _ in range(wl.rows)]
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": pa.array([f"r{i:07d}" for i in range(len(texts))]), "prompt": pa.array(texts)})
    pq.write_table(table, path, row_group_size=row_group)
    stamp.write_text(wl.fingerprint())
    return path
