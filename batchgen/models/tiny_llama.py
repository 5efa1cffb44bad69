"""A tiny random-weight Llama that vLLM's CPU build can load, built offline in seconds.

Tests and the demo need a real model folder but cannot download weights, so this writes one:
a 2-layer Llama with seeded random weights and a byte-level BPE tokenizer trained on a fixed text.
Same recipe and seed give a byte-identical folder, so outputs are reproducible across machines.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from batchgen.models.folder import build_folder, ensure_folder

if TYPE_CHECKING:  # heavy imports stay lazy: importing this module must be cheap
    import torch
    from tokenizers import Tokenizer

RECIPE_VERSION = 1  # bump whenever the bytes written change, so caches are rebuilt

VOCAB_SIZE = 512
HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS, HEAD_DIM = 128, 256, 2, 2, 2, 64
MAX_POSITIONS = 2048
EOS_SCALE = 0.85  # shrunken EOS row: ~2-3% of 64-token greedy runs stop on EOS, the rest hit max_tokens
SPECIAL_TOKENS = ("<s>", "</s>", "<pad>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>")
BOS, EOS, PAD, UNK = SPECIAL_TOKENS[:4]

# Roles as single special tokens; BOS comes from the template, so chat callers must not add it again.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

CORPUS = """\
The river ran quietly past the old mill, where the miller's daughter kept a small garden of beans,
onions and tall yellow flowers. Every morning she carried water from the river in two wooden buckets,
and every evening she counted the birds that came to rest on the roof of the mill.
In the town beyond the hill there was a market on Saturdays. Farmers brought apples, bread, cheese,
eggs and honey; children sold paper boats and painted stones. The baker always arrived first and
left last, because his bread was warm and everyone wanted a loaf before it was gone.
A computer reads a program one instruction at a time. It adds numbers, compares them, moves data from
memory to a register and back again, and jumps to another instruction when a condition is true.
Good programs are written for people to read, and only incidentally for machines to execute.
Question: What is the capital of France? Answer: The capital of France is Paris.
Question: How many days are there in a week? Answer: There are seven days in a week.
Please summarize the following text in one sentence. Translate this sentence into French.
Write a short poem about the sea, the wind, the moon and the stars over the quiet harbour.
When the weather is cold, wear a warm coat, a scarf and gloves; when it is hot, drink plenty of water.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000 2024. Punctuation: , . ; : ! ? ' " ( ) [ ] { } - + = / *
"""


def _train_tokenizer() -> Tokenizer:
    """Trains the byte-level BPE on CORPUS; byte-level means any text encodes, no <unk> needed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B:1", special_tokens=[(BOS, bos_id)]
    )
    return tok


def _weights(vocab: int, muted: list[int], eos: int, seed: int) -> dict[str, torch.Tensor]:
    """Seeded random weights. Large embeddings and lm_head make greedy output depend on the prompt.
    Muted lm_head rows (logit 0 vs ~+17 for the best token) are never picked, so output text is
    printable ASCII; EOS keeps a shrunken row so it exists but is rare (runs usually hit max_tokens)."""
    import torch

    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * std

    w: dict[str, torch.Tensor] = {"model.embed_tokens.weight": randn(vocab, HIDDEN, std=1.0)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = torch.ones(HIDDEN)
        w[p + "post_attention_layernorm.weight"] = torch.ones(HIDDEN)
        w[p + "self_attn.q_proj.weight"] = randn(HEADS * HEAD_DIM, HIDDEN, std=0.1)
        w[p + "self_attn.k_proj.weight"] = randn(KV_HEADS * HEAD_DIM, HIDDEN, std=0.1)
        w[p + "self_attn.v_proj.weight"] = randn(KV_HEADS * HEAD_DIM, HIDDEN, std=0.1)
        w[p + "self_attn.o_proj.weight"] = randn(HIDDEN, HEADS * HEAD_DIM, std=0.1)
        w[p + "mlp.gate_proj.weight"] = randn(INTERMEDIATE, HIDDEN, std=0.1)
        w[p + "mlp.up_proj.weight"] = randn(INTERMEDIATE, HIDDEN, std=0.1)
        w[p + "mlp.down_proj.weight"] = randn(HIDDEN, INTERMEDIATE, std=0.1)
    w["model.norm.weight"] = torch.ones(HIDDEN)
    lm_head = randn(vocab, HIDDEN, std=0.5)
    lm_head[eos] *= EOS_SCALE
    lm_head[muted] = 0
    w["lm_head.weight"] = lm_head
    return {name: t.to(torch.bfloat16).contiguous() for name, t in w.items()}


def _printable(piece: str) -> bool:
    """Whole printable ASCII (no control bytes, no partial UTF-8); special tokens decode to ''."""
    return bool(piece) and piece.isascii() and piece.isprintable()


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_model(folder: Path, seed: int) -> None:
    from safetensors.torch import save_file

    tok = _train_tokenizer()
    vocab = tok.get_vocab_size()
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    muted = [i for i in range(vocab) if i != ids[EOS] and not _printable(tok.decode([i]))]
    tok.save(str(folder / "tokenizer.json"))
    weights = _weights(vocab, muted, ids[EOS], seed)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    _write_json(folder / "config.json", {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
        "hidden_size": HIDDEN, "intermediate_size": INTERMEDIATE, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM,
        "max_position_embeddings": MAX_POSITIONS, "hidden_act": "silu", "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "attention_bias": False, "mlp_bias": False,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "initializer_range": 0.02,
        "bos_token_id": ids[BOS], "eos_token_id": ids[EOS], "pad_token_id": ids[PAD],
    })
    _write_json(folder / "generation_config.json", {
        "bos_token_id": ids[BOS], "eos_token_id": ids[EOS], "pad_token_id": ids[PAD],
    })
    special_map = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": UNK,
                   "additional_special_tokens": list(SPECIAL_TOKENS[4:])}
    _write_json(folder / "special_tokens_map.json", special_map)
    _write_json(folder / "tokenizer_config.json", {
        **special_map, "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": CHAT_TEMPLATE,
        "model_max_length": MAX_POSITIONS, "add_bos_token": True, "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    })


def build_tiny_model(dest: Path, *, seed: int = 0) -> Path:
    """Builds the model folder at dest. It appears whole or not at all (temp dir + rename),
    so a crash or a concurrent builder never leaves a half-written folder behind.
    Raises FileExistsError if dest already exists (then it is left untouched)."""
    return build_folder(dest, lambda tmp: _write_model(tmp, seed))


def ensure_tiny_model(cache_dir: Path, *, seed: int = 0) -> Path:
    """Returns the cached model folder under cache_dir, building it once. Safe under concurrency:
    the loser of a build race discards its copy and uses the winner's identical one."""
    return ensure_folder(Path(cache_dir).expanduser() / f"tiny-llama-v{RECIPE_VERSION}-s{seed}",
                         lambda tmp: _write_model(tmp, seed))


def main(argv: list[str] | None = None) -> int:
    """CLI: `python -m batchgen.models.tiny_llama [CACHE_DIR]` prints the model folder.
    CACHE_DIR defaults to $BATCHGEN_CACHE, else ~/.cache/batchgen (env is read only here)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or any(a.startswith("-") for a in args):
        print("usage: python -m batchgen.models.tiny_llama [CACHE_DIR]", file=sys.stderr)
        return 2
    cache = Path(args[0]) if args else Path(os.environ.get("BATCHGEN_CACHE", "~/.cache/batchgen"))
    print(ensure_tiny_model(cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())
