"""The benchmark workloads: model shapes and prompt/output lengths, named as in docs/benchmarks.md.

Shapes are real architectures with random (`load_format: dummy`) weights: the speed is the real one,
the text is noise. Output lengths are fixed by `ignore_eos`, so every method does the same work.
Row counts are sized for >= 30 s of generation per method on an H200 (docs/benchmarks.md's figures):
S ~310 req/s, W1 ~24, W3 ~40; on an H100 S-T ~300 and SYN ~100 (sessions 7 and 10: their first sizes, 8,000
and 2,500 rows, gave windows of 23-33 s).
A workload's `sampling` holds the job's `sampling:` keys beyond max_tokens and ignore_eos, as a user
writes them; benchmarks/sampling.py turns them into the raw loop's SamplingParams and run_batch's bodies.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelShape:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    head_dim: int
    max_positions: int = 4096
    tie_embeddings: bool = False

    def config(self) -> dict:
        """A Llama config.json of this shape (vLLM builds the model from it; dummy weights fill it)."""
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": self.vocab,
            "hidden_size": self.hidden, "intermediate_size": self.intermediate, "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads, "head_dim": self.head_dim,
            "max_position_embeddings": self.max_positions, "hidden_act": "silu", "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0, "attention_bias": False, "mlp_bias": False,
            "tie_word_embeddings": self.tie_embeddings, "torch_dtype": "bfloat16",
            "bos_token_id": 1, "eos_token_id": 2,
            # As transformers writes it; without it, transformers 5 warns about a Mistral regex on load.
            "transformers_version": "5.0.0",
        }


LLAMA_8B = ModelShape("llama-3.1-8b-shape", hidden=4096, layers=32, heads=32, kv_heads=8, intermediate=14336,
                      vocab=128256, head_dim=128)
# Qwen3-0.6B's dimensions in a Llama architecture (no q/k norms; the cost is the same to within noise).
SMALL_06B = ModelShape("0.6b-shape", hidden=1024, layers=28, heads=16, kv_heads=8, intermediate=3072,
                       vocab=151936, head_dim=128, tie_embeddings=True)


@dataclass(frozen=True)
class Workload:
    name: str
    shape: ModelShape
    rows: int
    prompt_tokens: int
    output_tokens: int
    prefix_tokens: int = 0  # leading tokens shared with other rows (0: every prompt is unique)
    prefixes: int = 1  # distinct shared prefixes, assigned round-robin
    shuffle: bool = False  # rows in random order (else rows sharing a prefix are adjacent)
    note: str = ""
    # Job `sampling:` keys, e.g. {"temperature": 0.8, "n": 4}. Structured workloads (a `structured` key): their
    # output_tokens is max_tokens, not a fixed length: the grammar ends a completion.
    sampling: dict = dataclasses.field(default_factory=dict)
    tokenizer: str = "words"  # "words": w<i> = token i (synth.py); "bpe": byte-level BPE, which JSON needs (structured_bench.py)

    @property
    def temperature(self) -> float:
        return float(self.sampling.get("temperature", 0.0))

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["shape"] = self.shape.name
        return d

    def fingerprint(self) -> str:
        """Identifies the generated files: data are rebuilt only when something here changes."""
        return json.dumps({**dataclasses.asdict(self), "v": 1}, sort_keys=True)


WORKLOADS: dict[str, Workload] = {
    "W1": Workload("W1", LLAMA_8B, rows=1000, prompt_tokens=1024, output_tokens=256,
                   note="8B shape, 1024 in / 256 out, unique prompts"),
    "W2": Workload("W2", LLAMA_8B, rows=1000, prompt_tokens=2048, output_tokens=128, prefix_tokens=1536,
                   note="8B shape, 2048 in of which 1536 shared by all rows, 128 out"),
    "W3": Workload("W3", LLAMA_8B, rows=1200, prompt_tokens=2048, output_tokens=128, prefix_tokens=1536,
                   prefixes=50, shuffle=True, note="as W2 with 50 different prefixes, rows shuffled"),
    "S": Workload("S", SMALL_06B, rows=12000, prompt_tokens=256, output_tokens=128,
                  note="0.6B shape, 256 in / 128 out, unique prompts"),
    "S-T": Workload("S-T", SMALL_06B, rows=10000, prompt_tokens=256, output_tokens=128,
                    sampling={"temperature": 0.8}, note="S at temperature 0.8, a seed per row"),
    "SYN": Workload("SYN", SMALL_06B, rows=4000, prompt_tokens=256, output_tokens=128,
                    sampling={"temperature": 0.8, "n": 4}, note="S with n=4 at temperature 0.8, a seed per row (synthetic data)"),
    # jobs/label.yaml's shape: a shared instruction, a short text, one of three labels with their scores.
    "CH": Workload("CH", LLAMA_8B, rows=4000, prompt_tokens=320, output_tokens=8, prefix_tokens=192, tokenizer="bpe",
                   sampling={"structured": {"choice": ["positive", "negative", "mixed"]}, "choice_scores": True},
                   note="8B shape, 320 in (192 shared), choice of 3 labels + label scores, max 8 out"),
    "JS": Workload("JS", LLAMA_8B, rows=1000, prompt_tokens=256, output_tokens=320, prefix_tokens=128, tokenizer="bpe",
                   sampling={"structured": {"json_schema": {
                       "type": "object", "additionalProperties": False, "required": ["question", "answer", "difficulty"],
                       "properties": {"question": {"type": "string", "maxLength": 100}, "answer": {"type": "string", "maxLength": 150},
                                      "difficulty": {"enum": ["medium", "hard", "very hard"]}}}}},
                   note="8B shape, 256 in (128 shared), JSON question/answer schema, max 320 out"),
}

# Token lengths are divided by this in --tiny mode (the CPU build of vLLM on batchgen's tiny model).
TINY_DIVISOR = 16


def tiny_shape(tiny_model_folder: Path) -> ModelShape:
    """The shape of batchgen's tiny test model (batchgen.models.tiny_llama), read from its config.json."""
    c = json.loads((Path(tiny_model_folder) / "config.json").read_text())
    return ModelShape("tiny-llama", hidden=c["hidden_size"], layers=c["num_hidden_layers"],
                      heads=c["num_attention_heads"], kv_heads=c["num_key_value_heads"],
                      intermediate=c["intermediate_size"], vocab=c["vocab_size"], head_dim=c["head_dim"],
                      max_positions=c["max_position_embeddings"])


def select(name: str, *, rows: int | None = None, tiny_from: Path | None = None) -> Workload:
    """A workload by name, optionally resized (rows) or shrunk onto the tiny model (tiny_from)."""
    try:
        wl = WORKLOADS[name]
    except KeyError:
        raise SystemExit(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}") from None
    if tiny_from is not None:
        d = TINY_DIVISOR
        # A structured workload's output_tokens is a cap its labels or JSON must fit in: kept.
        out = wl.output_tokens if wl.sampling.get("structured") else max(wl.output_tokens // d, 4)
        wl = dataclasses.replace(wl, shape=tiny_shape(tiny_from), prompt_tokens=max(wl.prompt_tokens // d, 8),
                                 output_tokens=out, prefix_tokens=wl.prefix_tokens // d,
                                 rows=min(wl.rows, 64), note=wl.note + f" (tiny: lengths / {d})")
    if rows is not None:
        wl = dataclasses.replace(wl, rows=rows)
    return wl
