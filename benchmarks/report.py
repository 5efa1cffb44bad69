"""Figures from method results: the table (Markdown), results as JSON and Parquet, and a PNG chart.

    python -m benchmarks.report OUT_DIR RESULTS.json [MORE.json ...]   merges runs made in separate calls;
    a completed run of a (workload, method) replaces a skipped or failed one from another file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

BASELINE = "raw one call"
COLUMNS = [  # (key, header, format)
    ("workload", "workload", "{}"), ("method", "method", "{}"), ("rows", "rows", "{}"),
    ("req_s", "req/s", "{:.1f}"), ("out_tok_s", "output tok/s", "{:,.0f}"), ("cache_hit", "prefix-cache hit", "{:.1%}"),
    ("x_raw", "× raw one call", "{:.2f}"), ("engine_start_s", "engine start s", "{:.1f}"),
    ("generate_s", "throughput window s", "{:.1f}"), ("wall_s", "batchgen wall s", "{:.1f}"),
    ("max_num_seqs", "max_num_seqs", "{}"), ("max_num_batched_tokens", "max_num_batched_tokens", "{}"),
]


def derive(results: list[dict]) -> list[dict]:
    """Adds req/s, output tok/s, hit rate and the ratio to the same workload's one-call baseline."""
    rows = []
    for r in results:
        r = dict(r)
        if r.get("status") == "ok" and r.get("generate_s"):
            r["req_s"] = r["rows"] / r["generate_s"]
            r["out_tok_s"] = r["output_tokens"] / r["generate_s"]
            r["cache_hit"] = r["cached_tokens"] / r["prompt_tokens"] if r["prompt_tokens"] else 0.0
        rows.append(r)
    base = {r["workload"]: r["req_s"] for r in rows if r["method"] == BASELINE and "req_s" in r}
    for r in rows:
        if "req_s" in r and r["workload"] in base:
            r["x_raw"] = r["req_s"] / base[r["workload"]]
    return rows


def markdown(rows: list[dict]) -> str:
    head = "| " + " | ".join(h for _, h, _ in COLUMNS) + " | status |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for r in rows:
        cells = [fmt.format(r[k]) if r.get(k) is not None else "–" for k, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + f" | {r.get('status', '?')} |")
    return "\n".join(lines) + "\n"


def chart(rows: list[dict], path: Path) -> None:
    """One panel per workload (their scales differ): req/s per method, labelled with × raw one call."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    most = max(sum(1 for r in rows if r["workload"] == wl) for wl in workloads)
    cols = min(2, len(workloads))
    lines = -(-len(workloads) // cols)
    fig, axes = plt.subplots(lines, cols, figsize=(5.6 * cols, (0.42 * most + 1.0) * lines), squeeze=False)
    colors = {"raw": "#9aa5b1", "batchgen": "#2f6fdb"}
    for ax, wl in zip(axes.flat, workloads):
        got = [r for r in rows if r["workload"] == wl and "req_s" in r][::-1]  # top to bottom as in the table
        bars = ax.barh([r["method"].replace(" [", "\n[") for r in got], [r["req_s"] for r in got],
                       color=[colors.get(r["kind"], "#777") for r in got])
        for bar, r in zip(bars, got):
            ax.annotate(f" {r['req_s']:.1f}" + (f"  ({r['x_raw']:.2f}×)" if "x_raw" in r else ""),
                        (bar.get_width(), bar.get_y() + bar.get_height() / 2), va="center", fontsize=7)
        ax.set_title(wl, fontsize=9, loc="left")
        ax.set_xlabel("requests / s", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.margins(x=0.3)
    for ax in list(axes.flat)[len(workloads):]:
        ax.axis("off")
    device = next((r.get("device") for r in rows if r.get("device")), "?")
    version = next((r.get("vllm_version") for r in rows if r.get("vllm_version")), "?")
    fig.suptitle(f"batchgen vs LLM.generate: {device}, vLLM {version}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(results: list[dict], out: Path, meta: dict | None = None) -> list[dict]:
    """results.json, results.parquet, table.md and chart.png under `out`; returns the derived rows."""
    out.mkdir(parents=True, exist_ok=True)
    rows = derive(results)
    (out / "results.json").write_text(json.dumps({"meta": meta or {}, "results": rows}, indent=1, default=str))
    keys = list(dict.fromkeys(k for r in rows for k in r))
    pq.write_table(pa.Table.from_pylist([{k: _scalar(r.get(k)) for k in keys} for r in rows]), out / "results.parquet")
    (out / "table.md").write_text(markdown(rows))
    if any("req_s" in r for r in rows):
        try:
            chart(rows, out / "chart.png")
        except ImportError:  # a GPU image without matplotlib: merge the JSON elsewhere for the chart
            pass
    return rows


def _scalar(v: object) -> object:
    return v if v is None or isinstance(v, (int, float, str, bool)) else str(v)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    merged: dict[tuple[str, str], dict] = {}
    metas = []
    for p in argv[1:]:
        doc = json.loads(Path(p).read_text())
        metas.append(doc.get("meta", {}))
        for r in doc["results"]:
            key = (r["workload"], r["method"])
            if key not in merged or r.get("status") == "ok":  # a completed run replaces a skipped or failed one
                merged[key] = r
    results = list(merged.values())
    rows = write(results, Path(argv[0]), {"merged_from": metas})
    print(markdown(rows), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
