"""Images in prompts: which images a row has, where their placeholders go, and loading them.

vLLM takes a vision prompt as text (or token ids) holding the model's placeholder once per image
(`<image>` for LLaVA; vLLM expands each into the image's feature tokens) plus the images
themselves. Rows name images two ways:

- `prompt.image_column` beside a `column`/`template` prompt: the placeholders go in front of the
  text, unless the text already has one per image;
- content parts of chat messages (`{"type": "image_url", "image_url": {"url": ...}}`, OpenAI's
  form, or `{"type": "image", ...}`), or a message's `images` list (OpenAI batch files): the chat
  template places them if it handles image parts (probed once), else they go in front of the
  message's text, as vLLM's own chat path does for such templates.
"""

from __future__ import annotations

from typing import Any

from batchgen.io.images import ImageError, ImageFetcher
from batchgen.job.spec import PromptSpec

IMAGE_PART_TYPES = ("image_url", "image")


class ImagePrompts:
    def __init__(self, prompt: PromptSpec, tokenizer: Any, model_placeholder: str | None, fetcher: ImageFetcher):
        self.spec = prompt
        self.placeholder = prompt.image_placeholder if prompt.image_placeholder is not None else model_placeholder
        self.fetcher = fetcher
        self.template_places_images = bool(self.placeholder) and _template_handles_images(tokenizer, self.placeholder)

    # -- which images ------------------------------------------------------------------------------
    def column_refs(self, cols: dict[str, list], i: int) -> list[Any]:
        """The image(s) of `prompt.image_column` in row i (none when the job has no image column or the cell is null)."""
        if not self.spec.image_column:
            return []
        cell = cols[self.spec.image_column][i]
        if cell is None:
            return []
        return [r for r in cell if r is not None] if isinstance(cell, list) else [cell]

    # -- where the placeholders go -----------------------------------------------------------------
    def template_messages(self, messages: list[dict]) -> tuple[list[dict], list[Any]]:
        """Messages as the chat template takes them, and their images in prompt order."""
        out, refs = [], []
        for m in messages:
            text, images = split_content(m)
            refs += images
            out.append({"role": m["role"], "content": self.content(text, len(images))})
        return out, refs

    def content(self, text: str, n_images: int) -> str | list[dict]:
        """A user message's content holding `n_images` images and `text`."""
        if not n_images:
            return text
        if self.template_places_images:
            return [{"type": "image"}] * n_images + [{"type": "text", "text": text}]
        return "\n".join([self.placeholder] * n_images + [text]) if self.placeholder else text

    def place(self, text: str, n_images: int, chat: bool) -> tuple[str, str | None]:
        """The prompt with one placeholder per image, or the reason it cannot have them."""
        if self.placeholder is None:
            return text, ("this model's image placeholder is unknown (no image_token in its processor or tokenizer "
                          "config): set prompt.image_placeholder, e.g. '<image>' (LLaVA), or '' if the model inserts "
                          "image tokens itself (PaliGemma)")
        if not self.placeholder:
            return text, None
        found = text.count(self.placeholder)
        if found == 0 and not chat:
            return "\n".join([self.placeholder] * n_images + [text]), None
        if found != n_images:
            return text, f"the prompt has {found} image placeholder(s) {self.placeholder!r} for {n_images} image(s)"
        return text, None

    # -- loading -----------------------------------------------------------------------------------
    def load(self, refs: list[Any], row_id: Any) -> tuple[list[Any], str | None]:
        images = []
        for k, ref in enumerate(refs):
            try:
                images.append(self.fetcher.load(ref))
            except ImageError as e:
                return [], f"row {row_id!r}: image {k + 1} of {len(refs)} is unreadable: {e}"
        return images, None


def split_content(message: dict) -> tuple[str, list[Any]]:
    """A message's text and its image references: content as a string (plus an `images` list), or as parts."""
    content, images = message.get("content"), list(message.get("images") or [])
    if isinstance(content, str) or content is None:
        return content or "", images
    texts = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            texts.append(part.get("text") or "")
        elif kind in IMAGE_PART_TYPES:
            images.append(image_ref(part))
    return "".join(texts), images


def image_ref(part: dict) -> Any:
    """What an image part points at: OpenAI's {"image_url": {"url": ...}} (or a bare string), else
    the Hugging Face forms {"image": ...}, {"url": ...}, {"path": ...}."""
    value = part.get("image_url")
    if isinstance(value, dict):
        value = value.get("url")
    return value or part.get("image") or part.get("url") or part.get("path")


def check_parts(content: Any) -> str | None:
    """Why a message's content is not a string or a list of text/image parts (None if it is one)."""
    if isinstance(content, str):
        return None
    if not isinstance(content, list):
        return f"content must be a string or a list of parts, got {type(content).__name__}"
    for part in content:
        if not isinstance(part, dict) or part.get("type") not in ("text", *IMAGE_PART_TYPES):
            return f"content parts must be {{type: text|image_url|image, ...}}, got {part!r}"[:300]
        if part.get("type") != "text" and not image_ref(part):
            return f"image part without a URL, path or bytes: {part!r}"[:300]
    return None


def _template_handles_images(tokenizer: Any, placeholder: str) -> bool:
    """Does the chat template turn an image part into the placeholder (as LLaVA's and Qwen-VL's do)?"""
    probe = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}]
    try:
        text = tokenizer.apply_chat_template(probe, add_generation_prompt=True, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot take parts takes strings
        return False
    return isinstance(text, str) and text.count(placeholder) == 1
