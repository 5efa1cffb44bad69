"""A tiny random-weight LLaVA (CLIP vision tower + Llama) for image prompts, built offline in seconds.

Tests need a real vision model folder that vLLM loads, and cannot download one: this writes a
2-layer Llama behind a 2-layer CLIP tower on 32x32 images (16 image tokens each), a character-level
tokenizer with the `<image>` placeholder, and a chat template that places image parts. The same
recipe with the shape of llava-1.5-7b (`LLAVA_15_7B`, configs only) gives a folder that vLLM loads
with `load_format: dummy` on a GPU: the real model's shapes, no download.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from batchgen.models.folder import build_folder, ensure_folder

RECIPE_VERSION = 1  # bump whenever the bytes written change, so caches are rebuilt
IMAGE_TOKEN = "<image>"
SPECIALS = ("<unk>", "<s>", "</s>", "<pad>")
CHARS = [chr(c) for c in range(32, 127)] + ["\n"]
EOS_SCALE = 0.85  # a shrunken EOS row: EOS exists but is rare, so runs mostly reach max_tokens

# Image parts become the placeholder where they stand; string content passes through.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)


@dataclass(frozen=True)
class LlavaShape:
    vocab: int
    image_token_index: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    max_positions: int
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    image_size: int
    patch_size: int

    @property
    def image_tokens(self) -> int:
        """Feature tokens per image: one per patch (vision_feature_select_strategy "default" drops CLS)."""
        return (self.image_size // self.patch_size) ** 2


TINY = LlavaShape(vocab=len(SPECIALS) + len(CHARS) + 1, image_token_index=len(SPECIALS) + len(CHARS), hidden=128,
                  intermediate=256, layers=2, heads=2, max_positions=512, vision_hidden=64, vision_intermediate=128,
                  vision_layers=2, vision_heads=2, image_size=32, patch_size=8)
# llava-hf/llava-1.5-7b-hf: Llama-2-7B behind CLIP ViT-L/14 at 336 px (576 image tokens).
LLAVA_15_7B = LlavaShape(vocab=32064, image_token_index=32000, hidden=4096, intermediate=11008, layers=32, heads=32,
                         max_positions=4096, vision_hidden=1024, vision_intermediate=4096, vision_layers=24,
                         vision_heads=16, image_size=336, patch_size=14)


def _vocab(shape: LlavaShape) -> dict[str, int]:
    """Specials, one token per character, fillers up to the image token's index, the image token, fillers."""
    names = list(SPECIALS) + CHARS
    names += [f"<extra_{i}>" for i in range(shape.image_token_index - len(names))]
    names.append(IMAGE_TOKEN)
    names += [f"<extra_{i}>" for i in range(len(names) - 1, shape.vocab - 1)]
    return {name: i for i, name in enumerate(names)}


def _processor(shape: LlavaShape):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=_vocab(shape), unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # every character is a token
    tok.decoder = decoders.Fuse()
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                     pad_token="<pad>", additional_special_tokens=[IMAGE_TOKEN])
    hf_tok.chat_template = CHAT_TEMPLATE
    images = CLIPImageProcessor(size={"shortest_edge": shape.image_size},
                                crop_size={"height": shape.image_size, "width": shape.image_size})
    return LlavaProcessor(image_processor=images, tokenizer=hf_tok, patch_size=shape.patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE)


def _config(shape: LlavaShape):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(hidden_size=shape.vision_hidden, intermediate_size=shape.vision_intermediate,
                              num_hidden_layers=shape.vision_layers, num_attention_heads=shape.vision_heads,
                              image_size=shape.image_size, patch_size=shape.patch_size)
    text = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                       num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.heads,
                       max_position_embeddings=shape.max_positions, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=shape.image_token_index,
                         vision_feature_select_strategy="default", vision_feature_layer=-2, projector_hidden_act="gelu")
    config.architectures = ["LlavaForConditionalGeneration"]  # what vLLM picks its model class by
    config.dtype = "bfloat16"
    return config


def _write(folder: Path, shape: LlavaShape, seed: int | None) -> None:
    """Config, tokenizer and processor files; with a seed, random weights too (else: load_format dummy)."""
    config = _config(shape)
    config.save_pretrained(folder)
    _processor(shape).save_pretrained(folder)
    if seed is not None:
        _write_weights(folder, config, shape, seed)


def _write_weights(folder: Path, config, shape: LlavaShape, seed: int) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    weights = {k: v.detach().clone() for k, v in LlavaForConditionalGeneration(config).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    # Large token embeddings and lm_head rows (as in tiny_llama) make greedy output follow the prompt and the
    # image; special tokens other than a shrunken EOS are never picked, so outputs are printable text.
    embed = torch.randn(shape.vocab, shape.hidden, generator=gen)
    lm_head = torch.randn(shape.vocab, shape.hidden, generator=gen) * 0.5
    vocab = _vocab(shape)
    lm_head[[i for name, i in vocab.items() if name.startswith("<") and len(name) > 1 and name != "</s>"]] = 0
    lm_head[vocab["</s>"]] *= EOS_SCALE
    out = {}
    for name, t in weights.items():
        # vLLM's llava loader takes the pre-v5 names: language_model.model.*, language_model.lm_head,
        # vision_tower.vision_model.*, multi_modal_projector.*.
        name = name.removeprefix("model.")
        if name.startswith("language_model.") and not name.startswith("language_model.model."):
            name = "language_model.model." + name.removeprefix("language_model.")
        if name.startswith("vision_tower.") and not name.startswith("vision_tower.vision_model."):
            name = "vision_tower.vision_model." + name.removeprefix("vision_tower.")
        if name == "lm_head.weight":
            name = "language_model.lm_head.weight"
        out[name] = t
    out["language_model.model.embed_tokens.weight"] = embed
    out["language_model.lm_head.weight"] = lm_head
    for name, w in out.items():  # attention and MLP as tiny_llama's (std 0.1): the context reaches the last token
        if name.startswith("language_model.model.layers.") and name.endswith("_proj.weight"):
            out[name] = torch.randn(*w.shape, generator=gen) * 0.1
    # Image features as large as token embeddings (the default init leaves them ~0: outputs would ignore the image).
    patch = out["vision_tower.vision_model.embeddings.patch_embedding.weight"]
    out["vision_tower.vision_model.embeddings.patch_embedding.weight"] = torch.randn(*patch.shape, generator=gen) * 2 / patch[0].numel() ** 0.5
    for layer, fan_in in (("linear_1", shape.vision_hidden), ("linear_2", shape.hidden)):
        w = out[f"multi_modal_projector.{layer}.weight"]
        out[f"multi_modal_projector.{layer}.weight"] = torch.randn(*w.shape, generator=gen) * 3 / fan_in ** 0.5
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in sorted(out.items())},
              str(folder / "model.safetensors"), metadata={"format": "pt"})


def build_llava(dest: Path, shape: LlavaShape = TINY, *, seed: int | None = 0) -> Path:
    """The model folder at dest, whole or not at all (temp dir + rename). seed=None: no weights.
    Raises FileExistsError if dest exists."""
    return build_folder(dest, lambda tmp: _write(tmp, shape, seed))


def ensure_tiny_llava(cache_dir: Path, *, seed: int = 0) -> Path:
    """The cached tiny LLaVA folder under cache_dir, built once (a lost build race uses the winner's)."""
    return ensure_folder(Path(cache_dir).expanduser() / f"tiny-llava-v{RECIPE_VERSION}-s{seed}",
                         lambda tmp: _write(tmp, TINY, seed))


def main(argv: list[str] | None = None) -> int:
    """`python -m batchgen.models.tiny_llava DEST [--shape llava-1.5-7b]`: the tiny model (weights), or
    the configs of llava-1.5-7b for `load_format: dummy`."""
    args = sys.argv[1:] if argv is None else argv
    shapes = {"tiny": TINY, "llava-1.5-7b": LLAVA_15_7B}
    if len(args) not in (1, 3) or (len(args) == 3 and (args[1] != "--shape" or args[2] not in shapes)):
        print("usage: python -m batchgen.models.tiny_llava DEST [--shape tiny|llava-1.5-7b]", file=sys.stderr)
        return 2
    shape = shapes[args[2]] if len(args) == 3 else TINY
    print(build_llava(Path(args[0]), shape, seed=0 if shape is TINY else None))
    print(json.dumps({"image_tokens": shape.image_tokens}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
