"""vLLM's own batch runner, timed: `python -m benchmarks.runbatch RESULT.json -i requests.jsonl -o out.jsonl
--model M [vLLM flags]` does what `python -m vllm.entrypoints.openai.run_batch` does (same argument
parser, same engine client, same `run_batch` coroutine) and also records how long its engine took to
start and how long the batch ran: reading the requests file, generating, writing the output file, as
batchgen's window counts reading and committing. Works on vLLM 0.26 (vllm.entrypoints.openai.run_batch)
and 0.32 (vllm.entrypoints.launchers.run_batch, which the old module now forwards to).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path


def _modules():
    try:  # 0.32: the implementation moved; the old module only warns and forwards
        from vllm.entrypoints.launchers import run_batch as rb
        from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
    except ImportError:  # 0.26
        from vllm.entrypoints.openai import run_batch as rb
        from vllm.entrypoints.openai.api_server import build_async_engine_client
    return rb, build_async_engine_client


async def _timed(rb, build, args) -> dict:
    from vllm.usage.usage_lib import UsageContext

    from batchgen.engine.vllm import effective_options

    rb.validate_run_batch_args(args)
    t0 = time.monotonic()
    async with build(args, usage_context=UsageContext.OPENAI_BATCH_RUNNER) as client:  # as rb.main does
        engine_start = time.monotonic() - t0
        options = effective_options(client.vllm_config)
        started_at, t1 = time.time(), time.monotonic()
        await rb.run_batch(client, args)
        seconds = time.monotonic() - t1
    return {"engine_start_s": engine_start, "generate_s": seconds, "engine_options": options,
            "started_at": started_at, "ended_at": started_at + seconds}


def read_output(path: Path) -> dict:
    """Rows, errors and token counts from run_batch's output file (its `usage` per response)."""
    rows = errors = prompt = cached = output = 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        rows += 1
        body = (rec.get("response") or {}).get("body") or {}
        if rec.get("error") or (rec.get("response") or {}).get("status_code") != 200:
            errors += 1
            continue
        usage = body.get("usage") or {}
        prompt += usage.get("prompt_tokens") or 0
        output += usage.get("completion_tokens") or 0
        cached += (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return {"rows": rows, "errors": errors, "prompt_tokens": prompt, "cached_tokens": cached, "output_tokens": output}


def main(argv: list[str]) -> int:
    import vllm

    result_path, vllm_args = Path(argv[0]), argv[1:]
    rb, build = _modules()
    sys.argv = ["run_batch", *vllm_args]
    args = rb.parse_args()
    result = asyncio.run(_timed(rb, build, args))
    result.update(read_output(Path(args.output_file)), vllm_version=vllm.__version__)
    result_path.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
