"""LoRA adapters for the tiny model, written as PEFT folders (adapter_config.json + adapter_model.safetensors).

Random weights, large enough that an adapter changes greedy outputs: each adapter is its own model.
"""

from __future__ import annotations

import json
from pathlib import Path

from batchgen.models import tiny_llama as tl

# Module -> (out features, in features) of the tiny Llama's linear layers.
SHAPES = {
    "q_proj": (tl.HEADS * tl.HEAD_DIM, tl.HIDDEN), "k_proj": (tl.KV_HEADS * tl.HEAD_DIM, tl.HIDDEN),
    "v_proj": (tl.KV_HEADS * tl.HEAD_DIM, tl.HIDDEN), "o_proj": (tl.HIDDEN, tl.HEADS * tl.HEAD_DIM),
    "gate_proj": (tl.INTERMEDIATE, tl.HIDDEN), "up_proj": (tl.INTERMEDIATE, tl.HIDDEN), "down_proj": (tl.HIDDEN, tl.INTERMEDIATE),
}


def write_adapter(folder: Path, seed: int, rank: int = 8, targets: tuple[str, ...] = ("q_proj", "v_proj"),
                  base: str = "tiny-llama") -> Path:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for layer in range(tl.LAYERS):
        for module in targets:
            out_f, in_f = SHAPES[module]
            part = "self_attn" if module.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            prefix = f"base_model.model.model.layers.{layer}.{part}.{module}"
            weights[f"{prefix}.lora_A.weight"] = torch.randn(rank, in_f, generator=gen) * 0.5
            weights[f"{prefix}.lora_B.weight"] = torch.randn(out_f, rank, generator=gen) * 0.5
    save_file(weights, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0,
        "target_modules": list(targets), "bias": "none", "base_model_name_or_path": base}))
    return folder
