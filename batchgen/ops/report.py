"""`batchgen report`: the stats Parquet as a picture and a page, for the morning after.

One PNG (matplotlib, Agg: no display needed on a cluster node) with four panels over wall-clock
time since the job's first part: throughput per worker, rows committed per worker, prefix-cache hit
rate per worker, error rows per worker. The HTML page inlines that PNG as base64 next to the
summary and the per-worker and per-unit tables, so it is one file to copy or attach anywhere.
"""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchgen.io.layout import REPORT_HTML, REPORT_PNG
from batchgen.io.store import Store
from batchgen.job.spec import JobSpec
from batchgen.ops.status import JobStatus, load_status

# Panel titles, also listed in the page: what the chart shows, by name.
PANELS = ("Throughput (rows/s)", "Rows committed", "Prefix-cache hit rate (%)", "Error rows (cumulative)")


@dataclass
class Series:
    worker: str
    t: list[float]  # seconds since the job's first part started, one entry per committed part
    rate_t: list[float]  # bin centres of the throughput series
    rows_per_second: list[float]
    rows_cumulative: list[int]
    cache_hit_pct: list[float]
    errors_cumulative: list[int]


@dataclass
class Report:
    png: bytes
    html: str
    lines: list[str]
    series: list[Series]


def make_report(spec: JobSpec) -> Report:
    st, state = load_status(spec)
    series, _ = build_series(state.stats)
    png = render_png(series, f"batchgen: {st.job}")
    return Report(png=png, html=render_html(st, png, series), lines=summary_lines(st), series=series)


def save_report(spec: JobSpec, report: Report, out: str | None) -> list[str]:
    """Write report.png and report.html into `out` (a local folder), else into the job's _batchgen/."""
    if out is None:
        store = Store.open(spec.output.path, spec.output.storage)
        store.put(REPORT_PNG, report.png)
        store.put(REPORT_HTML, report.html.encode())
        return [store.where(REPORT_PNG), store.where(REPORT_HTML)]
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.png").write_bytes(report.png)
    (folder / "report.html").write_text(report.html, encoding="utf-8")
    return [str(folder / "report.png"), str(folder / "report.html")]


def build_series(stats: list[dict[str, Any]]) -> tuple[list[Series], float | None]:
    """Per-worker time series from the stats rows (parts without a commit time are left out)."""
    timed = [s for s in stats if s["committed_at"] is not None]
    if not timed:
        return [], None
    t0 = min(s["committed_at"] - (s["span_seconds"] or 0.0) for s in timed)
    by_worker: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in sorted(timed, key=lambda s: s["committed_at"]):
        by_worker[s["worker"]].append(s)
    out = []
    for worker, rows in sorted(by_worker.items()):
        ser = Series(worker, [], [], [], [], [], [])
        total = errors = 0
        for s in rows:
            total += s["rows"]
            errors += s["errors"]
            ser.t.append(s["committed_at"] - t0)
            ser.rows_cumulative.append(total)
            ser.cache_hit_pct.append(100.0 * (s["cache_hit_rate"] or 0.0))
            ser.errors_cumulative.append(errors)
        out.append(ser)
    _bin_rates(out, by_worker, t0)
    return out, t0


def _bin_rates(series: list[Series], by_worker: dict[str, list[dict[str, Any]]], t0: float, bins: int = 24) -> None:
    """Rows/s in equal time bins: per-part rates are noise (a final flush commits several parts at once)."""
    end = max((max(s.t) for s in series if s.t), default=0.0)
    n = max(1, min(bins, sum(len(s.t) for s in series) // 2))  # about two commits per bin: fewer empty bins
    width = max(end / n, 1e-9)
    def bin_of(t: float) -> int:
        return max(0, min(int(t / width), n - 1))

    for ser in series:
        parts = by_worker[ser.worker]
        counts = [0] * n
        for s in parts:
            counts[bin_of(s["committed_at"] - t0)] += s["rows"]
        # Only while the worker was at work: zeros before it started or after it ended would read as stalls.
        first = bin_of(parts[0]["committed_at"] - (parts[0]["span_seconds"] or 0.0) - t0)
        last = bin_of(parts[-1]["committed_at"] - t0)
        ser.rate_t = [(k + 0.5) * width for k in range(first, last + 1)]
        ser.rows_per_second = [counts[k] / width for k in range(first, last + 1)]


def render_png(series: list[Series], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")  # before pyplot: no display on cluster nodes
    import matplotlib.pyplot as plt

    span = max((max(s.t) for s in series if s.t), default=0.0)
    scale, unit = (1.0, "s") if span < 180 else ((60.0, "min") if span < 3 * 3600 else (3600.0, "h"))
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5), dpi=100)
    for ax, panel, field in zip(axes.flat, PANELS, ("rows_per_second", "rows_cumulative", "cache_hit_pct", "errors_cumulative")):
        for s in series:
            xs = s.rate_t if field == "rows_per_second" else s.t
            ax.plot([x / scale for x in xs], getattr(s, field), marker="o", markersize=3, linewidth=1.5, label=s.worker)
        ax.set_title(panel)
        ax.set_xlabel(f"time since start ({unit})")
        ax.grid(True, alpha=0.3)
        ax.set_ylim(0, 100 if field == "cache_hit_pct" else max(ax.get_ylim()[1], 1))
        ax.set_xlim(left=0)
    if not series:
        for ax in axes.flat:
            ax.text(0.5, 0.5, "no committed parts yet", ha="center", va="center", transform=ax.transAxes)
    else:
        axes.flat[0].legend(title="worker", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def summary_lines(st: JobStatus) -> list[str]:
    total_prompt = sum(w.prompt_tokens for w in st.workers)
    cached = sum(w.cached_tokens for w in st.workers)
    out_tokens = sum(w.output_tokens for w in st.workers)
    of_total = f" of {st.rows_total:,}" if st.rows_total is not None else ""
    wall = (st.last_commit - st.started) if st.started is not None and st.last_commit is not None else 0.0
    jobs = [f"  job {j.id}: {j.rows:,}" + (f"/{j.rows_total:,}" if j.rows_total is not None else "") + " rows"
            + (" (forced)" if j.forced else "") + (", complete" if j.complete else "") for j in st.jobs] if len(st.jobs) > 1 else []
    return [
        f"job {st.job}: {'complete' if st.complete else 'incomplete'}; {st.rows:,}{of_total} rows committed, "
        f"{st.errors:,} error rows ({st.errors / st.rows:.2%} of rows)" if st.rows else f"job {st.job}: no rows committed yet",
        f"workers {len(st.workers)}, units {sum(u.state == 'done' for u in st.units)}/{len(st.units)} done, "
        f"parts {sum(w.parts for w in st.workers):,}",
        f"throughput {st.rows_per_second:,.2f} rows/s, {out_tokens / wall if wall else 0:,.1f} output tok/s over {wall:,.0f}s",
        f"tokens prompt {total_prompt:,}, cached {cached:,} (prefix-cache hit rate {cached / total_prompt if total_prompt else 0:.1%}), "
        f"output {out_tokens:,}",
    ] + ([f"{len(st.jobs)} jobs wrote into this folder (--force); rows by job:"] + jobs if jobs else [])


def render_html(st: JobStatus, png: bytes, series: list[Series]) -> str:
    esc = html.escape
    workers = [[w.worker, f"{w.rows:,}", f"{w.errors:,}", w.parts, f"{w.rows_per_second:,.2f}",
                f"{w.output_tokens_per_second:,.1f}", f"{w.cache_hit_rate:.1%}", w.state] for w in st.workers]
    units = [[u.unit, f"{u.rows:,}" + (f"/{u.rows_total:,}" if u.rows_total is not None else ""), f"{u.errors:,}",
              u.parts, u.state, ", ".join(u.workers)] for u in st.units[:500]]
    names = "".join(f"<li>{esc(p)}: {', '.join(esc(s.worker) for s in series) or 'no data'}</li>" for p in PANELS)
    jobs = [[j.id, f"{j.rows:,}" + (f"/{j.rows_total:,}" if j.rows_total is not None else ""), "forced" if j.forced else "first run",
             "yes" if j.complete else "no", "; ".join(j.changes)[:300]] for j in st.jobs]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>batchgen report: {esc(st.job)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th {{ background: #f3f3f3; }} td:first-child, th:first-child {{ text-align: left; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
</style></head><body>
<h1>batchgen report: {esc(st.job)}</h1>
<p>{"<br>".join(esc(line) for line in summary_lines(st))}<br>output: {esc(st.output)}</p>
<img alt="batchgen charts" src="data:image/png;base64,{base64.b64encode(png).decode()}">
<h2>Series</h2><ul class="series">{names}</ul>
<h2>Jobs</h2>{_table(["job", "rows", "how", "complete", "changes"], jobs)}
<h2>Workers</h2>{_table(["worker", "rows", "errors", "parts", "rows/s", "out tok/s", "cache hit", "state"], workers)}
<h2>Work units</h2>{_table(["unit", "rows", "errors", "parts", "state", "workers"], units)}
</body></html>
"""


def _table(head: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"
