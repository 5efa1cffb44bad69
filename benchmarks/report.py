"""Figures from the runs: per method the median and min-max of its runs (table.md), every run (runs.md),
results as JSON and Parquet, and a PNG chart.

    python -m benchmarks.report OUT_DIR RESULTS.json [MORE.json ...]   merges the runs of several calls

Ratios use medians: a method's median req/s over the median of "raw one call" (the hand-written loop with
batchgen's engine options), of the best tuned raw loop, and of vLLM's run_batch, on the same workload.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.options import brief

BASELINE = "raw one call"
RUN_BATCH = "vLLM run_batch"
SUMMARY = [  # (key, header, format)
    ("workload", "workload", "{}"), ("method", "method", "{}"), ("runs", "runs", "{}"),
    ("req_s", "req/s (median)", "{:.1f}"), ("req_s_range", "min–max", "{}"),
    ("req_s_output", "req/s to last commit", "{:.1f}"), ("out_tok_s", "output tok/s", "{:,.0f}"),
    ("x_raw", "× raw one call", "{:.2f}"), ("x_best_raw", "× best tuned raw", "{:.2f}"), ("x_run_batch", "× run_batch", "{:.2f}"),
    ("all_engines_req_s", "all engines req/s", "{:.1f}"), ("cache_hit", "prefix hit", "{:.1%}"),
    ("gpu_busy", "GPU busy", "{:.0%}"), ("engine_start_s", "engine start s", "{:.1f}"), ("generate_s", "window s", "{:.1f}"), ("options", "engine options", "{}"),
]
RUNS = [("round", "round", "{}"), ("workload", "workload", "{}"), ("method", "method", "{}"), ("status", "status", "{}"),
        ("req_s", "req/s", "{:.1f}"), ("req_s_output", "req/s to last commit", "{:.1f}"), ("generate_s", "window s", "{:.1f}"), ("engine_start_s", "engine start s", "{:.1f}"),
        ("process_s", "process s", "{:.1f}"), ("all_engines_req_s", "all engines req/s", "{:.1f}"),
        ("ready_spread_s", "engines ready spread s", "{:.1f}"), ("busiest", "busiest threads (share of a core)", "{}"),
        ("gpu_busy", "GPU busy (NVML)", "{:.0%}"), ("options_diff", "options differing from batchgen's", "{}")]


def derive(results: list[dict]) -> list[dict]:
    """Adds req/s, output tok/s and the prefix-cache hit rate to every completed run."""
    rows = []
    for r in results:
        r = dict(r)
        if r.get("status") == "ok" and r.get("generate_s"):
            r["req_s"] = r["rows"] / r["generate_s"]
            r["out_tok_s"] = r["output_tokens"] / r["generate_s"]
            r["cache_hit"] = r["cached_tokens"] / r["prompt_tokens"] if r.get("prompt_tokens") else 0.0
            if r.get("output_s"):  # batchgen: rows over the time to its last commit (the final commit included)
                r["req_s_output"] = r["rows"] / r["output_s"]
        if r.get("host_cpu"):  # the processes whose busiest thread came closest to a whole core
            top = sorted(r["host_cpu"], key=lambda p: -p["busiest_thread"])[:3]
            r["busiest"] = ", ".join(f"{p['process']} {p['busiest_thread']:.2f}" for p in top)
        rows.append(r)
    return rows


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(rows: list[dict]) -> list[dict]:
    """One line per (workload, method), in order of first appearance: medians over its completed runs."""
    keys = list(dict.fromkeys((r["workload"], r["method"]) for r in rows))
    out = []
    for wl, method in keys:
        runs = [r for r in rows if (r["workload"], r["method"]) == (wl, method)]
        ok = [r for r in runs if "req_s" in r]
        line: dict = {"workload": wl, "method": method, "kind": runs[0].get("kind"), "runs": f"{len(ok)}/{len(runs)}",
                      "n_ok": len(ok), "req_s_all": [round(r["req_s"], 2) for r in ok]}
        if ok:
            for k in ("req_s", "req_s_output", "out_tok_s", "cache_hit", "gpu_busy", "engine_start_s", "generate_s", "all_engines_req_s"):
                line[k] = _median([r.get(k) for r in ok])
            line["req_s_range"] = f"{min(r['req_s'] for r in ok):.1f}–{max(r['req_s'] for r in ok):.1f}"
            line["options"] = brief(ok[-1].get("engine_options") or {})
            if any(r.get("options_diff") for r in ok):
                line["options"] += " (DIFFERS from batchgen's: see runs.md)"
        out.append(line)
    for wl in dict.fromkeys(k[0] for k in keys):
        mine = [line for line in out if line["workload"] == wl and "req_s" in line]
        base = next((line["req_s"] for line in mine if line["method"] == BASELINE), None)
        best = max((line["req_s"] for line in mine if line["kind"] == "raw" and "defaults" not in line["method"]), default=None)
        rb = next((line["req_s"] for line in mine if line["method"] == RUN_BATCH), None)
        for line in mine:
            for key, ref in (("x_raw", base), ("x_best_raw", best), ("x_run_batch", rb)):
                if ref:
                    line[key] = line["req_s"] / ref
    return out


def markdown(lines: list[dict], columns: list = SUMMARY) -> str:
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    out = [head, "|" + "---|" * len(columns)]
    for r in lines:
        cells = [fmt.format(r[k]) if r.get(k) not in (None, {}, "") else "–" for k, _, fmt in columns]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def chart(lines: list[dict], path: Path, meta_rows: list[dict]) -> None:
    """One panel per workload (their scales differ): median req/s per method, min-max as whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(r["workload"] for r in lines if "req_s" in r))  # none measured: no empty panel
    if not workloads:
        return
    most = max(sum(1 for r in lines if r["workload"] == wl) for wl in workloads)
    cols = min(2, len(workloads))
    nrows = -(-len(workloads) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(max(6.0 * cols, 8.0), (0.45 * most + 1.1) * nrows), squeeze=False)
    colors = {"raw": "#9aa5b1", "run_batch": "#c9a227", "batchgen": "#2f6fdb"}
    for ax, wl in zip(axes.flat, workloads):
        got = [r for r in lines if r["workload"] == wl and "req_s" in r][::-1]  # top to bottom as in the table
        lo = [max(0.0, r["req_s"] - min(r["req_s_all"])) for r in got]
        hi = [max(0.0, max(r["req_s_all"]) - r["req_s"]) for r in got]
        bars = ax.barh([r["method"].replace(" [", "\n[").replace("; ", ";\n") for r in got], [r["req_s"] for r in got], xerr=[lo, hi],
                       color=[colors.get(r["kind"], "#777") for r in got], error_kw={"elinewidth": 0.8, "capsize": 2})
        for bar, r in zip(bars, got):
            label = f" {r['req_s']:.1f}" + (f"  ({r['x_raw']:.2f}×)" if "x_raw" in r else "") + f"  n={r['n_ok']}"
            ax.annotate(label, (max(r["req_s_all"]), bar.get_y() + bar.get_height() / 2), va="center", fontsize=7)
        ax.set_title(wl, fontsize=9, loc="left")
        ax.set_xlabel("requests / s (median, min–max)", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.margins(x=0.35)
    for ax in list(axes.flat)[len(workloads):]:
        ax.axis("off")
    # The raw loop's name for the device first: a node's summary prefixes it with its engine count.
    device = next((r.get("device") for r in sorted(meta_rows, key=lambda r: r.get("kind") != "raw") if r.get("device")), "?")
    version = next((r.get("vllm_version") for r in meta_rows if r.get("vllm_version")), "?")
    fig.suptitle(f"batchgen vs LLM.generate and run_batch: {device}, vLLM {version}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(results: list[dict], out: Path, meta: dict | None = None) -> list[dict]:
    """results.json, results.parquet, table.md, runs.md and chart.png under `out`; returns the derived runs."""
    out.mkdir(parents=True, exist_ok=True)
    rows = derive(results)
    lines = summarize(rows)
    (out / "results.json").write_text(json.dumps({"meta": meta or {}, "results": rows, "summary": lines}, indent=1, default=str))
    keys = list(dict.fromkeys(k for r in rows for k in r))
    pq.write_table(pa.Table.from_pylist([{k: _scalar(r.get(k)) for k in keys} for r in rows]), out / "results.parquet")
    (out / "table.md").write_text(markdown(lines))
    (out / "runs.md").write_text(markdown(rows, RUNS))
    if any("req_s" in line for line in lines):
        try:
            chart(lines, out / "chart.png", rows)
        except ImportError:  # a GPU image without matplotlib: merge the JSON elsewhere for the chart
            pass
    return rows


def _scalar(v: object) -> object:
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)
    return v if v is None or isinstance(v, (int, float, str, bool)) else str(v)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    results, metas = [], []
    for p in argv[1:]:
        doc = json.loads(Path(p).read_text())
        metas.append(doc.get("meta", {}))
        results += [{**r, "source": p} for r in doc["results"]]
    rows = write(results, Path(argv[0]), {"merged_from": metas})
    print(markdown(summarize(rows)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
