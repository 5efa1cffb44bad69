"""The baseline: the `LLM.generate` loop a user writes by hand. Run as its own process:

    python -m benchmarks.raw CONFIG.json RESULT.json

CONFIG holds model, prompts (Parquet), engine (LLM keyword arguments), max_tokens, temperature and
chunk (0: all prompts in one call; N: calls of N prompts). Engine start is timed apart; throughput
counts from the first request to the last result.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq


def run(cfg: dict) -> dict:
    import vllm
    from vllm import LLM, SamplingParams

    t0 = time.monotonic()  # after the imports, as batchgen's engine_start_seconds
    llm = LLM(model=cfg["model"], seed=0, **cfg["engine"])
    engine_start = time.monotonic() - t0
    prompts = pq.read_table(cfg["prompts"], columns=["prompt"]).column(0).to_pylist()
    params = SamplingParams(max_tokens=cfg["max_tokens"], temperature=cfg["temperature"],
                            ignore_eos=not cfg.get("sampling"), **structured_options(cfg.get("sampling") or {}, llm))
    chunk = cfg["chunk"] or len(prompts)
    outputs = []
    t1 = time.monotonic()
    for i in range(0, len(prompts), chunk):
        outputs += llm.generate(prompts[i:i + chunk], params, use_tqdm=False)
    seconds = time.monotonic() - t1
    sched = llm.llm_engine.vllm_config.scheduler_config
    return {
        "rows": len(outputs),
        "errors": 0,
        "prompt_tokens": sum(len(o.prompt_token_ids or []) for o in outputs),
        "cached_tokens": sum(o.num_cached_tokens or 0 for o in outputs),
        "output_tokens": sum(len(c.token_ids) for o in outputs for c in o.outputs),
        "engine_start_s": engine_start,
        "generate_s": seconds,
        "vllm_version": vllm.__version__,
        "device": _device(),
        "max_num_seqs": sched.max_num_seqs,
        "max_num_batched_tokens": sched.max_num_batched_tokens,
    }


def structured_options(sampling: dict, llm) -> dict:
    """The SamplingParams a user writes by hand for a structured workload (job `sampling` keys, as batchgen's):
    a choice or JSON schema, and for label scores the logprobs of the tokens that begin each choice."""
    from vllm.sampling_params import StructuredOutputsParams

    st = sampling.get("structured")
    if not st:
        return {}
    kind, value = next(iter(st.items()))
    out = {"structured_outputs": StructuredOutputsParams(**{"json" if kind == "json_schema" else kind: value})}
    if sampling.get("choice_scores"):  # the same token ids batchgen asks for (computed before the timed loop)
        from batchgen.engine.choices import ChoiceTokens

        vocab = llm.llm_engine.vllm_config.model_config.get_vocab_size()
        out["logprob_token_ids"] = ChoiceTokens.for_tokenizer(llm.get_tokenizer(), vocab).ids(value)
    return out


def _device() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001 - the name is informative only
        return "unknown"


def main(argv: list[str]) -> int:
    cfg = json.loads(Path(argv[0]).read_text())
    result = run(cfg)
    Path(argv[1]).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
