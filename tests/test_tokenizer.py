"""Token ids straight from the Rust tokenizer are the ids transformers gives (the fast path of the reader)."""

from __future__ import annotations

import pytest

from batchgen.job.spec import ModelSpec
from batchgen.run.tokenizer import encode_ids, load_tokenizer


def _texts(tok) -> list[str]:
    chat = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Rivers?"}],
                                   add_generation_prompt=True, tokenize=False) if tok.chat_template else "<s> hi </s>"
    return ["The river ran past the old mill.", "", "  spaces  and\ttabs\n", "ünïcödé and emoji 🙂", chat, "w5 w17 w3"]


@pytest.mark.parametrize("special", [True, False])
def test_direct_ids_equal_transformers(tiny_model, tmp_path, special):
    from benchmarks.synth import write_model_folder
    from benchmarks.workloads import SMALL_06B

    for folder in (tiny_model, write_model_folder(SMALL_06B, tmp_path / "words")):
        tok = load_tokenizer(ModelSpec(path=str(folder)))
        texts = _texts(tok)
        assert encode_ids(tok, texts, special) == tok(texts, add_special_tokens=special)["input_ids"]


def test_falls_back_to_transformers_when_the_backend_would_differ(tiny_model):
    tok = load_tokenizer(ModelSpec(path=str(tiny_model)))
    texts = ["one two three four five six seven eight"]
    full = tok(texts, add_special_tokens=True)["input_ids"]
    tok.backend_tokenizer.enable_truncation(max_length=3)  # transformers clears it on each call; the Rust call would not
    assert encode_ids(tok, texts, True) == full

    class Wrapped:  # not a transformers tokenizer at all (a test double, a custom class)
        def __call__(self, texts, add_special_tokens):
            return {"input_ids": [[len(t)] for t in texts]}

    assert encode_ids(Wrapped(), ["abc"], True) == [[3]]
