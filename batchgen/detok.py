"""Text of finished rows from their token ids, decoded off the engine's path.

vLLM decodes every new token of every running request in its front-end process, between engine
steps, on the same thread that must hand the engine its next requests. A batch job only needs the
final text, so when nothing needs the text while generating (no stop strings), batchgen asks vLLM
for token ids only and decodes each finished row in its commit thread instead.

The text is the one vLLM would have returned: the same algorithm as vLLM's FastIncrementalDetokenizer
(a `tokenizers` DecodeStream primed with the prompt, stepped token by token, so leading spaces and
multi-byte characters come out the same, and bytes still incomplete at the end are dropped), and the
same rule for a stop token (not decoded).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from batchgen.io.parts import OutputRow
from batchgen.spec import SamplingSpec

log = logging.getLogger("batchgen")

# Sampling options that need vLLM's own incremental text while generating, or change how it is decoded.
TEXT_OPTIONS = frozenset({"detokenize", "stop", "include_stop_str_in_output", "spaces_between_special_tokens",
                          "logprobs", "prompt_logprobs", "output_kind"})
INVALID_PREFIX = "Invalid prefix encountered"  # tokenizers' error text; vLLM restarts the stream on it


class Detokenizer:
    """Decodes (prompt ids, output ids) into vLLM's text. `available` is False for slow tokenizers."""

    def __init__(self, tokenizer: Any):
        self._tok = getattr(tokenizer, "_tokenizer", None)  # the Rust tokenizer behind a fast HF tokenizer
        try:
            from tokenizers.decoders import DecodeStream

            DecodeStream(ids=[], skip_special_tokens=True)  # prefill (`ids=`) needs tokenizers >= 0.22
            self._stream = DecodeStream
        except (ImportError, TypeError):
            self._stream = None

    @property
    def available(self) -> bool:
        return self._tok is not None and self._stream is not None

    def wanted(self, sampling: SamplingSpec) -> bool:
        """Whether rows sampled with `sampling` can leave decoding to us."""
        return self.available and not sampling.stop and not (TEXT_OPTIONS & set(sampling.extra))

    def text(self, prompt_ids: Sequence[int], output_ids: Sequence[int], stopped: bool, skip_special_tokens: bool) -> str:
        """`stopped`: the row ended on a stop token (EOS or stop_token_ids), which is not part of the text."""
        ids = output_ids[:-1] if stopped and output_ids else output_ids
        stream = self._stream(ids=list(prompt_ids), skip_special_tokens=skip_special_tokens)
        pieces = []
        for token in ids:
            try:
                piece = stream.step(self._tok, token)
            except (OverflowError, TypeError):
                log.warning("invalid token id %r in an output: skipped in its text", token)
                piece = None
            except Exception as e:  # noqa: BLE001 - the one recoverable DecodeStream error, as vLLM handles it
                if not str(e).startswith(INVALID_PREFIX):
                    raise
                stream = self._stream(skip_special_tokens=skip_special_tokens)
                piece = stream.step(self._tok, token)
            if piece:
                pieces.append(piece)
        return "".join(pieces)

    def fill(self, rows: Sequence[OutputRow]) -> None:
        """Decode the texts of the rows that came back as token ids."""
        for row in rows:
            pending = row.pending_text
            if pending is None:
                continue
            row.texts = [self.text(pending.prompt_ids, ids, reason == "stop", pending.skip_special_tokens)
                         for ids, reason in zip(pending.token_ids, row.finish_reasons)]
            row.pending_text = None


def text_decoder(mode: str, tokenizer: Any) -> Detokenizer | None:
    """The decoder for `runtime.text_decoding`, or None when vLLM decodes (asked for, or a slow tokenizer)."""
    if mode != "batchgen":
        return None
    detok = Detokenizer(tokenizer)
    if not detok.available:
        log.info("text decoded by vLLM: the tokenizer is not a fast one with DecodeStream (tokenizers >= 0.22)")
        return None
    return detok
