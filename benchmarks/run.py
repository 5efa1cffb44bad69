"""Run the benchmark: `python -m benchmarks.run -w S -w W1 --methods batchgen,raw1,rawN --rounds 3 --out bench-out`.

For each workload: write the model folder, the prompts (Parquet) and the same prompts as an OpenAI
batch file, then run the methods (benchmarks/methods.py) in rounds, A B C A B C ..., each in its own
process, one after the other on the same device. Results are saved after every run (table.md with the
median and min-max of each method, runs.md with every run, results.json/.parquet, chart.png), so a run
cut short (--budget, a timeout, SIGTERM) keeps what it did. `--tiny` runs the same on the CPU build
of vLLM with batchgen's tiny model and small sizes.
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import sys
import time
from pathlib import Path

import yaml

from benchmarks import report
from benchmarks.execute import run_group
from benchmarks.methods import Setup, groups, parse_variants, pick
from benchmarks.synth import write_model_folder, write_prompts, write_requests
from benchmarks.workloads import WORKLOADS, Workload, select

ROOT = Path(__file__).resolve().parent.parent
# A run with one of these is done; any other status (skipped for the budget, cut by a timeout or SIGTERM,
# waiting for batchgen's options) is run again by a later --resume.
DONE = ("ok", "failed")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", "-w", action="append", choices=list(WORKLOADS), help="repeatable; default: S")
    p.add_argument("--rows", type=int, help="rows per workload (default: the workload's own)")
    p.add_argument("--chunk", type=int, default=512, help="prompts per call for the chunked raw loop")
    p.add_argument("--methods", default="batchgen,raw1,rawN",
                   help="comma list, run in this order each round: raw1 rawN raw1d rawNd runbatch runbatcht batchgen "
                        "batchgen1 or a --variant label (see benchmarks/methods.py)")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL=KEY=VALUE[;KEY=VALUE]",
                   help="a batchgen variant usable in --methods, e.g. --variant 'e2=runtime.engines_per_gpu=2'")
    p.add_argument("--rounds", type=int, default=3, help="times each method runs, interleaved")
    p.add_argument("--tiny", action="store_true", help="CPU: batchgen's tiny model, lengths / 16, 64 rows")
    p.add_argument("--engine", action="append", default=[], metavar="KEY=VALUE",
                   help="vLLM engine option for every method, e.g. --engine max_num_seqs=512 (values are YAML)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="job override for every batchgen method, e.g. --set runtime.window=512")
    p.add_argument("--options-from", type=Path, help="results.json whose batchgen runs give the tuned methods their options")
    p.add_argument("--out", type=Path, default=ROOT / ".cache" / "bench" / "out",
                   help="results: table.md, runs.md, results.json/.parquet, chart.png")
    p.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench", help="model folders, prompts, method logs")
    p.add_argument("--timeout", type=float, default=900, help="seconds per process")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole run: a process that would not fit (by its last duration, else --first-guess) is skipped")
    p.add_argument("--first-guess", type=float, default=90.0, help="seconds assumed for a process not timed yet (--budget)")
    p.add_argument("--resume", action="store_true",
                   help="keep the completed runs in --out's results.json and run only the others (the next call of a GPU script)")
    p.add_argument("--dry-run", action="store_true", help="check the arguments and print the schedule; run nothing")
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


def prepare(args: argparse.Namespace, name: str) -> Setup:
    tiny_from = None
    if args.tiny:
        from batchgen.models.tiny_llama import ensure_tiny_model

        tiny_from = ensure_tiny_model(ROOT / ".cache" / "models")
    wl = select(name, rows=args.rows, tiny_from=tiny_from)
    data = args.work / "data" / f"{wl.name}-{wl.shape.name}-{wl.rows}"
    if wl.tokenizer == "bpe":  # structured workloads: a tokenizer that can write JSON (benchmarks/structured_bench.py)
        from benchmarks.structured_bench import write_bpe_model_folder, write_bpe_prompts

        model = write_bpe_model_folder(wl.shape, args.work / "models" / f"{wl.shape.name}-bpe")
        prompts = write_bpe_prompts(wl, model, data.with_suffix(".parquet"))
    else:
        model = write_model_folder(wl.shape, args.work / "models" / wl.shape.name)
        prompts = write_prompts(wl, data.with_suffix(".parquet"))
    # run_batch is not measured on structured workloads (label scores have no OpenAI equivalent; the BPE
    # folders carry no chat template).
    requests = None if wl.tokenizer == "bpe" else write_requests(wl, prompts, model, data.with_suffix(".jsonl"))
    return Setup(workload=wl, model=model, prompts=prompts, requests=requests,
                 work=args.work / "runs" / args.out.name, engine=engine_options(args, wl), batchgen_sets=list(args.sets))


def label(wl: Workload) -> str:
    """The workload's name in results: resized runs are told apart (their figures do not mix with the others)."""
    return wl.name if wl.rows == WORKLOADS[wl.name].rows else f"{wl.name}, {wl.rows} rows"


def reference_options(results: list[dict], workload: str) -> dict | None:
    """Engine options of plain batchgen's latest completed run of `workload`."""
    for r in reversed(results):
        if r.get("workload") == workload and r.get("method") == "batchgen" and r.get("status") == "ok" and r.get("engine_options"):
            return r["engine_options"]
    return None


def _done(r: dict) -> bool:
    return str(r.get("status", "")).startswith(DONE)


def _previous(args: argparse.Namespace) -> tuple[list[dict], dict]:
    """Completed runs and meta of an earlier call into the same --out (with --resume)."""
    path = args.out / "results.json"
    if not (args.resume and path.exists()):
        return [], {}
    doc = json.loads(path.read_text())
    return [r for r in doc["results"] if _done(r)], doc.get("meta", {})


class Stop(Exception):
    """SIGTERM (a `timeout` around the harness): save what was measured and end."""


def _stop(signum: int, _frame: object) -> None:
    raise Stop(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    variants = parse_variants(args.variant)
    todo = pick(args.methods, args.chunk, variants, args.options_from is not None)
    if args.dry_run:
        return _dry_run(args, todo)
    known = json.loads(args.options_from.read_text())["results"] if args.options_from else []
    results, meta = _previous(args)
    meta.setdefault("started", time.strftime("%Y-%m-%d %H:%M:%S"))
    meta.update(python=platform.python_version(), host_cpus=_cpus(), rounds=args.rounds,
                variants={k: list(v) for k, v in variants.items()})
    meta.setdefault("commands", []).append("python -m benchmarks.run " + " ".join(argv))
    signal.signal(signal.SIGTERM, _stop)
    deadline = None if args.budget is None else time.monotonic() + args.budget
    try:
        for name in args.workload or ["S"]:
            setup = prepare(args, name)
            meta.setdefault("workloads", {})[name] = {**setup.workload.as_dict(), "engine": setup.engine}
            print(f"== {name}: {setup.workload.note}; {setup.workload.rows} rows; engine {setup.engine}", flush=True)
            _rounds(args, todo, setup, results, known, meta, deadline)
    except Stop as e:
        print(f"== stopped by {e}: results so far are in {args.out}", flush=True)
        meta["stopped"] = str(e)
    rows = report.write(results, args.out, meta)
    print(report.markdown(report.summarize(rows)), end="")
    return 0 if all(r.get("status") == "ok" for r in rows) and "stopped" not in meta else 1


def _rounds(args: argparse.Namespace, todo: list, setup: Setup, results: list[dict], known: list[dict], meta: dict,
            deadline: float | None) -> None:
    """Every round of one workload; each process's results are saved as soon as it ends."""
    name = label(setup.workload)
    done = {(r["workload"], r["method"], r["round"]) for r in results}
    for rnd in range(1, args.rounds + 1):
        for group in groups(todo, rnd):
            todo_here = [m for m in group if (name, m.name, rnd) not in done]
            if not todo_here:
                continue
            key = f"{name}: {' + '.join(sorted(m.name for m in group))}"  # the same whichever call goes first
            timed = [r["process_s"] for r in results if r.get("group") == key and r.get("process_s")]
            guess = timed[-1] if timed else args.first_guess
            left = args.timeout if deadline is None else deadline - time.monotonic()
            if deadline is not None and left < guess:
                out = [{"method": m.name, "kind": m.kind, "round": rnd, "status": "skipped (budget)"} for m in group]
            else:
                ref = reference_options(results, name) or reference_options(known, name)
                out = run_group(group, setup, rnd, ref, timeout=min(args.timeout, left))
            for r in out:
                if r["method"] in {m.name for m in todo_here}:
                    r.update(workload=name, group=key)
                    results.append(r)
                    _say(r)
            report.write(results, args.out, meta)


def _dry_run(args: argparse.Namespace, todo: list) -> int:
    """The schedule, without preparing or running anything: a typo in a GPU script fails here, on the CPU."""
    for name in args.workload or ["S"]:
        wl = select(name, rows=args.rows)
        print(f"== {name}: {wl.note}; {wl.rows} rows; {args.rounds} rounds")
        for rnd in range(1, args.rounds + 1):
            print(f"   round {rnd}: " + " | ".join(" + ".join(m.name for m in g) for g in groups(todo, rnd)))
    return 0


def _say(r: dict) -> None:
    head = f"   r{r['round']} {r['method']}"
    if r.get("status") != "ok":
        print(f"{head}: {r['status']}\n{r.get('log_tail', '')}", flush=True)
        return
    gen = r["generate_s"]
    extra = f", all engines {r['all_engines_req_s']:.1f} req/s" if r.get("all_engines_req_s") else ""
    diff = f", options differ: {r['options_diff']}" if r.get("options_diff") else ""
    print(f"{head}: {r['rows'] / gen:.1f} req/s, {r['output_tokens'] / gen:,.0f} out tok/s, "
          f"hit {r['cached_tokens'] / max(r['prompt_tokens'], 1):.1%}, start {r['engine_start_s']:.1f}s, "
          f"window {gen:.1f}s, process {r['process_s']:.1f}s{extra}{diff}", flush=True)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)


if __name__ == "__main__":
    sys.exit(main())
