"""A decoder's dimensions from its config.json, and what follows from them: parameters, FLOPs and
bytes per token. Used to pick how many engines share a GPU (`runtime.engines_per_gpu: auto`) and by
the roofline calculator of the benchmarks (benchmarks/roofline.py).

Dense Llama-style decoders (Llama, Qwen, Mistral, Gemma...) and MoE configs that name their experts
(`num_local_experts` / `num_experts` with `num_experts_per_tok`); vision-language configs are read
through their `text_config`. An estimate, not a census: norms and biases are left out (< 0.1%).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelDims:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool = False
    experts: int = 1  # MoE: experts per layer (1: dense)
    experts_per_token: int = 1

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> ModelDims:
        c = cfg.get("text_config") or cfg
        hidden, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
        experts = int(c.get("num_local_experts") or c.get("num_experts") or 1)
        inter = c.get("moe_intermediate_size") if experts > 1 and c.get("moe_intermediate_size") else c["intermediate_size"]
        return cls(hidden=hidden, layers=int(c["num_hidden_layers"]), heads=heads,
                   kv_heads=int(c.get("num_key_value_heads") or heads), head_dim=int(c.get("head_dim") or hidden // heads),
                   intermediate=int(inter), vocab=int(c["vocab_size"]),
                   tied_embeddings=bool(c.get("tie_word_embeddings", cfg.get("tie_word_embeddings", False))),
                   experts=experts, experts_per_token=int(c.get("num_experts_per_tok") or 1))

    def _attention(self) -> int:
        return self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)  # q, o; k, v

    def _mlp(self) -> int:
        return 3 * self.hidden * self.intermediate  # gate, up, down

    def params(self) -> int:
        """Every weight (all experts)."""
        embed = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return embed + self.layers * (self._attention() + self.experts * self._mlp())

    def active_params(self) -> int:
        """Weights one token goes through (MoE: its experts only), the output projection included."""
        return self.vocab * self.hidden + self.layers * (self._attention() + self.experts_per_token * self._mlp())

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


def read_dims(model_path: str) -> ModelDims | None:
    """The dimensions of a local model folder; None for a hub id, a missing folder or an unknown config."""
    path = Path(model_path).expanduser() / "config.json"
    try:
        return ModelDims.from_config(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
