"""batchgen's own cost per row, with the model replaced by the instant engine (`runtime.engine: instant`).

    python -m benchmarks.hostcost --rows 200000 --prompt-tokens 256      per-row cost (rows/s per core)
    python -m benchmarks.hostcost --rows 5000000 --prompt-tokens 32      flat memory on a huge shard

Reads, renders, tokenizes, writes and commits every row as a real job does; only generation is free.
The measurement runs in a child process so its memory is the pipeline's alone. It reports
  - rows/s over the run and per CPU-second (all threads: reader, main loop, committer),
  - resident memory sampled over time (it must stay flat while rows stream through),
  - time from the engine being ready to the first request added and the first step.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from batchgen.engine.instant import InstantEngine
from benchmarks.synth import SPECIALS, write_model_folder
from benchmarks.workloads import SMALL_06B

ROOT = Path(__file__).resolve().parent.parent


def write_big_shard(path: Path, rows: int, prompt_tokens: int, vocab: int, row_group: int, chunk: int = 250_000) -> Path:
    """A shard written chunk by chunk (bounded memory here too), in row groups of `row_group` rows."""
    stamp = path.with_suffix(".json")
    want = json.dumps({"rows": rows, "tokens": prompt_tokens, "vocab": vocab, "row_group": row_group})
    if path.exists() and stamp.exists() and stamp.read_text() == want:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    words = np.array([f"w{i}" for i in range(vocab)], dtype=object)
    schema = pa.schema([("id", pa.string()), ("prompt", pa.string())])
    with pq.ParquetWriter(path, schema) as w:
        pending: list[pa.Table] = []
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            ids = rng.integers(len(SPECIALS), vocab, (n, prompt_tokens))
            texts = [" ".join(r) for r in words[ids].tolist()]
            pending.append(pa.table({"id": [f"r{start + i:09d}" for i in range(n)], "prompt": texts}, schema=schema))
            if sum(t.num_rows for t in pending) >= row_group or start + n >= rows:
                w.write_table(pa.concat_tables(pending), row_group_size=row_group)
                pending = []
    stamp.write_text(want)
    return path


class TimedEngine(InstantEngine):
    """The instant engine, noting when the first request and the first step came after it was ready."""

    def __init__(self, spec) -> None:
        super().__init__(spec)
        self.ready = time.monotonic()
        self.cpu_at_ready = _cpu_seconds()  # per-row cost counts from here: not imports, not tokenizer loading
        self.first_add: float | None = None
        self.first_step: float | None = None
        self.done = 0

    def add(self, req):
        if self.first_add is None:
            self.first_add = time.monotonic()
        return super().add(req)

    def step(self):
        if self.first_step is None:
            self.first_step = time.monotonic()
        out = super().step()
        self.done += len(out)
        return out


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(cfg: dict) -> dict:
    """In this process: run the job with a timed instant engine while sampling memory."""
    from batchgen.job.load import validate
    from batchgen.run.runner import RunOptions, Runner

    spec = validate(cfg["job"])
    box: dict = {}

    def factory(s):
        box["engine"] = TimedEngine(s)
        return box["engine"]

    samples: list[tuple[float, float, int]] = []
    stop = threading.Event()
    t0 = time.monotonic()

    def sample() -> None:
        while not stop.is_set():
            eng = box.get("engine")
            samples.append((time.monotonic() - t0, _rss_mib(), eng.done if eng else 0))
            stop.wait(cfg.get("sample_seconds", 0.5))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    summary = Runner(spec, RunOptions(engine_factory=factory, worker="hostcost")).run()
    eng = box["engine"]
    cpu = _cpu_seconds() - eng.cpu_at_ready
    stop.set()
    sampler.join()
    rows = summary.counters.rows
    rss = [r for _, r, _ in samples]
    # Memory once the pipeline is full (after the first tenth of the rows) versus at the end.
    steady = [r for _, r, d in samples if d >= rows / 10] or rss
    return {
        "rows": rows, "errors": summary.counters.errors, "prompt_tokens": summary.counters.prompt_tokens,
        "generate_s": summary.generate_seconds, "wall_s": summary.wall_seconds, "cpu_s": cpu,
        "rows_per_s": rows / summary.generate_seconds, "rows_per_cpu_s": rows / cpu,
        "first_add_after_ready_s": eng.first_add - eng.ready, "first_step_after_ready_s": eng.first_step - eng.ready,
        "rss_mib_start": rss[0], "rss_mib_steady_min": min(steady), "rss_mib_steady_max": max(steady),
        "rss_mib_end": rss[-1], "rss_samples": samples[:: max(1, len(samples) // 200)],
    }


def rss_chart(result: dict, path: Path) -> None:
    """Resident memory against rows done: a streaming pipeline draws a flat line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, rss, done = zip(*result["rss_samples"])
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.plot([d / 1e6 for d in done], rss, color="#2f6fdb")
    ax.set_xlabel("rows done (millions)", fontsize=8)
    ax.set_ylabel("RSS (MiB)", fontsize=8)
    ax.set_ylim(0, max(rss) * 1.2)
    ax.tick_params(labelsize=7)
    ax.set_title(f"batchgen, instant engine: {result['rows']:,} rows, {result['shard_mib']:.0f} MiB shard", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def job(shard: Path, model: Path, out: Path, batch_rows: int) -> dict:
    return {
        "name": "hostcost", "input": {"path": str(shard), "batch_rows": batch_rows}, "prompt": {"column": "prompt"},
        "model": {"path": str(model), "max_model_len": 4096}, "sampling": {"max_tokens": 128, "temperature": 0},
        "output": {"path": str(out)}, "checkpoint": {"every_seconds": 5},
        "runtime": {"engine": "instant", "progress": "off"},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.hostcost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--row-group", type=int, default=1024 * 1024, help="rows per row group (pyarrow's default: 1Mi)")
    p.add_argument("--batch-rows", type=int, default=1024, help="input.batch_rows")
    p.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench")
    p.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    p.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # child mode: a config file
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.measure:
        cfg = json.loads(args.measure.read_text())
        Path(cfg["result"]).write_text(json.dumps(measure(cfg)))
        return 0
    model = write_model_folder(SMALL_06B, args.work / "models" / SMALL_06B.name)
    shard = write_big_shard(args.work / "data" / f"host-{args.rows}-{args.prompt_tokens}-{args.row_group}.parquet",
                            args.rows, args.prompt_tokens, SMALL_06B.vocab, args.row_group)
    run_dir = args.work / "runs" / f"hostcost-{args.rows}"
    subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    run_dir.mkdir(parents=True)
    cfg = {"job": job(shard, model, run_dir / "out", args.batch_rows), "result": str(run_dir / "result.json")}
    (run_dir / "config.json").write_text(json.dumps(cfg))
    subprocess.run([sys.executable, "-m", "benchmarks.hostcost", "--measure", str(run_dir / "config.json")], check=True, cwd=ROOT)
    result = json.loads((run_dir / "result.json").read_text())
    result.update(rows_requested=args.rows, prompt_tokens_per_row=args.prompt_tokens, row_group=args.row_group,
                  shard_mib=shard.stat().st_size / 2**20)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        rss_chart(result, args.out.with_suffix(".png"))
    show = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items() if k != "rss_samples"}
    print(json.dumps(show, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
