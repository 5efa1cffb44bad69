"""The baseline: the `LLM.generate` loop a user writes by hand. Run as its own process:

    python -m benchmarks.raw CONFIG.json RESULT.json

CONFIG holds model, prompts (Parquet), engine (LLM keyword arguments), max_tokens, sampling (the
workload's, see benchmarks/sampling.py) and calls: [{"method": name, "chunk": N}, ...], run one after
the other on the same engine (chunk 0: all prompts in one call; N: calls of N prompts), with the prefix
cache emptied between them. Engine start is timed apart; each call's throughput counts from its first
request to its last result (tokenization included, as a user's loop pays it). RESULT is rewritten
after every call, so a run cut short keeps the calls it finished.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq


def _generate(llm, prompts: list[str], params, chunk: int) -> tuple[list, float, list, float]:
    """The outputs, the seconds, the host's CPU meanwhile (as batchgen's summaries record it) and the wall-clock
    start (the harness's GPU samples are matched to the window by it)."""
    from batchgen.run.hostcpu import HostCpu

    chunk = chunk or len(prompts)
    outputs = []
    cpu = HostCpu(own_name="raw loop")
    started_at, t0 = time.time(), time.monotonic()
    for i in range(0, len(prompts), chunk):
        batch_params = params[i:i + chunk] if isinstance(params, list) else params
        outputs += llm.generate(prompts[i:i + chunk], batch_params, use_tqdm=False)
    seconds = time.monotonic() - t0
    return outputs, seconds, cpu.shares(seconds), started_at


def run(cfg: dict, result_path: Path) -> dict:
    import vllm
    from vllm import LLM

    from batchgen.engine.vllm import effective_options
    from benchmarks.sampling import raw_params

    t0 = time.monotonic()  # after the imports, as batchgen's engine_start_seconds
    llm = LLM(model=cfg["model"], seed=0, **cfg["engine"])
    engine_start = time.monotonic() - t0
    table = pq.read_table(cfg["prompts"], columns=["id", "prompt"]).to_pydict()
    prompts, ids = table["prompt"], table["id"]
    params = raw_params(cfg["sampling"], cfg["max_tokens"], ids, llm)
    result = {"engine_start_s": engine_start, "vllm_version": vllm.__version__, "device": _device(),
              "engine_options": effective_options(llm.llm_engine.vllm_config), "calls": []}
    for k, call in enumerate(cfg["calls"]):
        if k:
            llm.reset_prefix_cache()  # the calls share the engine, not its cache: same prompts again
        outputs, seconds, host_cpu, started_at = _generate(llm, prompts, params, call["chunk"])
        result["calls"].append({
            "method": call["method"], "rows": len(outputs), "errors": 0, "generate_s": seconds, "host_cpu": host_cpu,
            "started_at": started_at, "ended_at": started_at + seconds,
            "prompt_tokens": sum(len(o.prompt_token_ids or []) for o in outputs),
            "cached_tokens": sum(o.num_cached_tokens or 0 for o in outputs),
            "output_tokens": sum(len(c.token_ids) for o in outputs for c in o.outputs),
        })
        result_path.write_text(json.dumps(result, indent=1))
    return result


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
    run(cfg, Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
