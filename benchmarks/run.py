"""Run the benchmark: `python -m benchmarks.run --workload S --workload W1 --out bench-out`.

For each workload: write the model folder and the prompts, then run each method in its own process
(raw one call, raw calls of --chunk, batchgen, optionally batchgen with one commit), one after the
other on the same device. Results are saved after every method, so a run cut short keeps what it did.
`--tiny` runs the same on the CPU build of vLLM with batchgen's tiny model and small sizes.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import yaml

from benchmarks import report
from benchmarks.methods import Method, Setup, methods, run_method
from benchmarks.synth import write_model_folder, write_prompts
from benchmarks.workloads import WORKLOADS, Workload, select

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", "-w", action="append", choices=list(WORKLOADS), help="repeatable; default: S")
    p.add_argument("--rows", type=int, help="rows per workload (default: the workload's own)")
    p.add_argument("--chunk", type=int, default=512, help="prompts per call for the chunked raw loop")
    p.add_argument("--methods", default="raw1,rawN,batchgen",
                   help="comma list of raw1, rawN, batchgen, batchgen1 (one commit at the end)")
    p.add_argument("--tiny", action="store_true", help="CPU: batchgen's tiny model, lengths / 16, 64 rows")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (the default)")
    p.add_argument("--engine", action="append", default=[], metavar="KEY=VALUE",
                   help="vLLM engine option for every method, e.g. --engine max_num_seqs=512 (values are YAML)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="batchgen-only job override, e.g. --set runtime.window=512")
    p.add_argument("--out", type=Path, default=ROOT / ".cache" / "bench" / "out",
                   help="results: table.md, results.json/.parquet, chart.png")
    p.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench", help="model folders, prompts, method logs")
    p.add_argument("--timeout", type=float, default=900, help="seconds per method")
    p.add_argument("--budget", type=float, default=None, help="seconds for the whole run; later methods are skipped")
    return p.parse_args(argv)


def engine_options(args: argparse.Namespace, wl: Workload) -> dict:
    opts: dict = {"max_model_len": wl.shape.max_positions, "load_format": "dummy"}
    if args.tiny:
        # CPU build: no compilation to pay for; the KV cache comes from VLLM_CPU_KVCACHE_SPACE, and this
        # fraction (of host memory on the CPU backend) only has to fit beside other processes.
        opts.update(enforce_eager=True, gpu_memory_utilization=0.05)
    else:
        opts["gpu_memory_utilization"] = 0.9
    for item in args.engine:
        key, _, value = item.partition("=")
        opts[key] = yaml.safe_load(value)
    return opts


def pick_methods(spec: str, chunk: int) -> list[Method]:
    every = {m.name: m for m in methods(chunk, one_commit=True)}
    short = {"raw1": "raw one call", "rawN": f"raw calls of {chunk}", "batchgen": "batchgen", "batchgen1": "batchgen 1 commit"}
    try:
        return [every[short[s.strip()]] for s in spec.split(",") if s.strip()]
    except KeyError as e:
        raise SystemExit(f"unknown method {e}; choose from {', '.join(short)}") from None


def prepare(args: argparse.Namespace, name: str) -> Setup:
    tiny_from = None
    if args.tiny:
        from batchgen.models.tiny_llama import ensure_tiny_model

        tiny_from = ensure_tiny_model(ROOT / ".cache" / "models")
    wl = select(name, rows=args.rows, tiny_from=tiny_from)
    data = args.work / "data" / f"{wl.name}-{wl.shape.name}-{wl.rows}.parquet"
    if wl.tokenizer == "bpe":  # structured workloads: a tokenizer that can write JSON (benchmarks/structured_bench.py)
        from benchmarks.structured_bench import write_bpe_model_folder, write_bpe_prompts

        model = write_bpe_model_folder(wl.shape, args.work / "models" / f"{wl.shape.name}-bpe")
        prompts = write_bpe_prompts(wl, model, data)
    else:
        model = write_model_folder(wl.shape, args.work / "models" / wl.shape.name)
        prompts = write_prompts(wl, data)
    return Setup(workload=wl, model=model, prompts=prompts, work=args.work / "runs", engine=engine_options(args, wl),
                 temperature=args.temperature, batchgen_sets=list(args.sets))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    t_start = time.monotonic()
    todo = pick_methods(args.methods, args.chunk)
    meta = {"command": "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv),
            "python": platform.python_version(), "host_cpus": _cpus(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    results: list[dict] = []
    for name in args.workload or ["S"]:
        setup = prepare(args, name)
        meta.setdefault("workloads", {})[name] = {**setup.workload.as_dict(), "engine": setup.engine}
        print(f"== {name}: {setup.workload.note}; {setup.workload.rows} rows; engine {setup.engine}", flush=True)
        for m in todo:
            left = args.timeout if args.budget is None else min(args.timeout, args.budget - (time.monotonic() - t_start))
            if left < 20:
                result = {"method": m.name, "kind": m.kind, "status": "skipped (budget)"}
            else:
                result = run_method(m, setup, timeout=left)
            result["workload"] = name
            if args.sets and m.kind == "batchgen":  # a tuned variant must never pass for the default
                result["method"] = f"{m.name} [{'; '.join(args.sets)}]"
            results.append(result)
            _say(result)
            report.write(results, args.out, meta)
    rows = report.write(results, args.out, meta)
    print(report.markdown(rows), end="")
    return 0 if all(r.get("status") == "ok" for r in rows) else 1


def _say(r: dict) -> None:
    if r.get("status") != "ok":
        print(f"   {r['method']}: {r['status']}\n{r.get('log_tail', '')}", flush=True)
        return
    gen = r["generate_s"]
    print(f"   {r['method']}: {r['rows'] / gen:.1f} req/s, {r['output_tokens'] / gen:,.0f} out tok/s, "
          f"hit {r['cached_tokens'] / max(r['prompt_tokens'], 1):.1%}, start {r['engine_start_s']:.1f}s, "
          f"window {gen:.1f}s, process {r['process_s']:.1f}s", flush=True)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)


if __name__ == "__main__":
    sys.exit(main())
