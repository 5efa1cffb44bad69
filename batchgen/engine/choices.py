"""Label scores of a `choice` constraint from the first generated token, in the same pass (no second request).

Under the choice grammar the first token can only be one that *begins* a choice: for "positive" that is
"p", "po", "pos", ... "positive" as far as the vocabulary has them. vLLM applies the grammar's mask to
the logits before it computes logprobs, so asking for exactly those tokens (`logprob_token_ids`) gives
the constrained first-step distribution, whose mass is all on them. A choice's score is the mass of
the tokens that begin it; a token that begins several choices (a shared prefix such as "Pos" for
"Positive" and "Possible") is split equally among them, and the scores are normalized to sum to 1.

Limits: only the first token decides, so choices that share their first tokens get similar scores
whatever the model prefers after the shared part, and a multi-token label is scored by how it starts
(use labels that differ from their first characters, e.g. single words or letters). At most
MAX_IDS tokens are asked for (vLLM's cap); past it, the longest tokens of each choice are kept.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

MAX_IDS = 128  # vLLM's MAX_LOGPROB_TOKEN_IDS (0.26 and 0.32)


def decoded_vocab(tokenizer: Any, vocab_size: int) -> list[bytes]:
    """Each token id's bytes as generation emits them (xgrammar's view, which vLLM's grammar backends share)."""
    try:
        import xgrammar

        return list(xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size).decoded_vocab)
    except Exception:  # noqa: BLE001 - xgrammar missing or the tokenizer unknown to it: decode one by one
        return [tokenizer.decode([i]).encode() if i < len(tokenizer) else b"" for i in range(vocab_size)]


class ChoiceTokens:
    """The vocabulary as bytes -> token ids, built once per engine; then per choice list, which tokens to ask for."""

    def __init__(self, vocab: Sequence[bytes], special_ids: Sequence[int] = ()):
        special = set(special_ids)
        self._vocab = vocab
        self._by_bytes: dict[bytes, list[int]] = {}
        for i, b in enumerate(vocab):
            if b and i not in special:
                self._by_bytes.setdefault(b, []).append(i)
        self._cache: dict[tuple[str, ...], dict[int, tuple[str, ...]]] = {}

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, vocab_size: int) -> ChoiceTokens:
        return cls(decoded_vocab(tokenizer, vocab_size), getattr(tokenizer, "all_special_ids", ()))

    def starts(self, choices: Sequence[str]) -> dict[int, tuple[str, ...]]:
        """Token id -> the choices it begins, at most MAX_IDS ids (the longest tokens first)."""
        key = tuple(choices)
        if key not in self._cache:
            found: dict[int, list[str]] = {}
            for c in choices:
                raw = c.encode()
                for k in range(1, len(raw) + 1):
                    for tid in self._by_bytes.get(raw[:k], ()):
                        found.setdefault(tid, []).append(c)
            keep = sorted(found, key=lambda t: (-len(self._vocab[t]), t))[:MAX_IDS]
            if len(self._cache) > 1024:  # per-row choices: bounded
                self._cache.clear()
            self._cache[key] = {t: tuple(dict.fromkeys(found[t])) for t in keep}
        return self._cache[key]

    def ids(self, choices: Sequence[str]) -> list[int]:
        return sorted(self.starts(choices))

    def scores(self, choices: Sequence[str], first: dict[int, Any]) -> dict[str, float] | None:
        """label -> probability from the first position's logprobs (token id -> vLLM Logprob); None if no mass."""
        mass = dict.fromkeys(choices, 0.0)
        for tid, begun in self.starts(choices).items():
            lp = first.get(tid)
            if lp is None or lp.logprob == -math.inf:
                continue
            share = math.exp(lp.logprob) / len(begun)
            for c in begun:
                mass[c] += share
        total = math.fsum(mass.values())
        if total <= 0:
            return None
        return {c: m / total for c, m in mass.items()}
