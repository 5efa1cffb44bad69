"""Scale-out overhead of batchgen itself: N engines of a fixed pace against one, no GPU needed.

    python -m benchmarks.scaleout --rows 40000 --engines 1,2 --rate 300

Each engine is the instant engine paced by `runtime.instant_rows_per_second`: it finishes rows at that
rate however they are batched, and engines never slow each other down. Everything else is the
real node: `batchgen run` as a supervisor with one child per engine, units claimed under leases, parts
committed, one node summary. So N x the one-engine rate is the ceiling, and what is missing from it is
batchgen's: readiness skew between engines, the tail (the last units finishing on some engines while
the others idle), claims and commits. On a GPU node the rest of the gap is the engines' own.

Prints, per engine count: node rows/s over the node's window (first engine's first request to the
last engine's last result), the ratio to one engine, and where the time went (start skew, tail).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from benchmarks.hostcost import write_big_shard
from benchmarks.synth import write_model_folder
from benchmarks.workloads import SMALL_06B

ROOT = Path(__file__).resolve().parent.parent
WORKER = "scaleout"


def job(shard: Path, model: Path, out: Path, engines: int, rate: float, unit_rows: int | None) -> dict:
    return {
        "name": f"scaleout-{engines}", "input": {"path": str(shard), "unit_rows": unit_rows},
        "prompt": {"column": "prompt"}, "model": {"path": str(model), "max_model_len": 4096},
        "sampling": {"max_tokens": 128, "temperature": 0}, "output": {"path": str(out)},
        "checkpoint": {"every_seconds": 5},
        "runtime": {"engine": "instant", "instant_rows_per_second": rate, "num_engines": engines,
                    "progress": "off"},
    }


def run_one(run_dir: Path, spec: dict) -> dict:
    """`batchgen run` in a child process; the node's summary and its engines' (epoch start/end of generation)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    path = run_dir / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    t0 = time.monotonic()
    with (run_dir / "log.txt").open("w") as log:
        subprocess.run([sys.executable, "-m", "batchgen", "run", str(path), "--worker-id", WORKER],
                       stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, check=True)
    wall = time.monotonic() - t0
    meta = Path(spec["output"]["path"]) / "_batchgen"
    node = json.loads((meta / f"summary-{WORKER}.json").read_text())
    engines = [json.loads(p.read_text()) for p in sorted(meta.glob(f"summary-{WORKER}-e*.json"))] or [node]
    return {"node": node, "engines": engines, "process_s": wall}


def figures(engines: int, result: dict, base_rate: float | None) -> dict:
    node, parts = result["node"], result["engines"]
    rate = node["rows"] / node["generate_seconds"]
    starts = [p["generate_started_at"] for p in parts]
    ends = [p["generate_ended_at"] for p in parts]
    return {
        "engines": engines, "rows": node["rows"], "rows_per_s": round(rate, 1),
        "window_s": round(node["generate_seconds"], 2),
        "vs_1_engine": round(rate / base_rate, 3) if base_rate else 1.0,
        "per_engine_rows_per_s": [round(p["rows_per_second"], 1) for p in parts],
        "start_skew_s": round(max(starts) - min(starts), 2), "tail_s": round(max(ends) - min(ends), 2),
        "process_s": round(result["process_s"], 1),
    }


def markdown(rows: list[dict], rate: float) -> str:
    out = [f"Instant engines paced at {rate:.0f} rows/s each (the ceiling is N x that).", "",
           "| engines | rows/s | of N x ceiling | vs 1 engine | window | start skew | tail | per engine rows/s |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['engines']} | {r['rows_per_s']:.1f} | {r['rows_per_s'] / (rate * r['engines']):.1%} | "
                   f"{r['vs_1_engine']:.3f} | {r['window_s']:.1f} s | {r['start_skew_s']:.2f} s | {r['tail_s']:.2f} s | "
                   f"{', '.join(f'{x:.0f}' for x in r['per_engine_rows_per_s'])} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaleout", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=40_000)
    p.add_argument("--engines", default="1,2", help="engine counts to run, comma-separated; the first is the base")
    p.add_argument("--rate", type=float, default=300.0, help="runtime.instant_rows_per_second of each engine")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--unit-rows", type=int, default=None, help="input.unit_rows (default: batchgen's own choice)")
    p.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench")
    p.add_argument("--out", type=Path, default=None, help="write results JSON here (and a .md table beside it)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    model = write_model_folder(SMALL_06B, args.work / "models" / SMALL_06B.name)
    shard = write_big_shard(args.work / "data" / f"scaleout-{args.rows}-{args.prompt_tokens}.parquet",
                            args.rows, args.prompt_tokens, SMALL_06B.vocab, row_group=1024)
    rows: list[dict] = []
    base: float | None = None
    for n in [int(x) for x in args.engines.split(",")]:
        run_dir = args.work / "runs" / f"scaleout-{args.rows}-e{n}"
        result = run_one(run_dir, job(shard, model, run_dir / "out", n, args.rate, args.unit_rows))
        r = figures(n, result, base)
        base = base or r["rows_per_s"]
        rows.append(r)
        print(json.dumps(r), flush=True)
    table = markdown(rows, args.rate)
    print(table, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"command": "python -m benchmarks.scaleout " + " ".join(sys.argv[1:] if argv is None else argv),
                                        "results": rows}, indent=1))
        args.out.with_suffix(".md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
