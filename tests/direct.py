"""vLLM's own API on a test engine, to compare batchgen's outputs with (greedy, the same prompts)."""

from __future__ import annotations

from typing import Any


def direct_texts(llm: Any, prompts: dict[str, Any], params: Any, lora_request: Any = None) -> dict[str, str]:
    """key -> first completion's text of each prompt (a string or a prompt dict), through LLMEngine.add_request/step."""
    for key, prompt in prompts.items():
        llm.add_request(f"direct-{key}", prompt, params, lora_request=lora_request)
    out = {}
    while llm.has_unfinished_requests():
        for o in llm.step():
            if o.finished:
                out[o.request_id.removeprefix("direct-")] = o.outputs[0].text
    return out
