"""The report's PNG: the job over time (rates, commits, errors, prefix cache, upload backlog) and the
distributions of prompt and output tokens per row. matplotlib with the Agg backend: no display needed.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np

from batchgen.ops.rowfacts import RowFacts
from batchgen.ops.timeline import Timeline

# (title, what it draws): also listed in the page, so a reader knows each panel by name.
PANELS = (
    ("Rows/s", "rows committed per second, each part spread over the time it took; grey: engine start"),
    ("Output tokens/s", "generated tokens per second, binned the same way"),
    ("Rows committed", "cumulative rows per worker"),
    ("Error rows", "cumulative error rows per worker"),
    ("Prefix-cache hit rate (%)", "cached prompt tokens / prompt tokens, per part"),
    ("Upload backlog (parts)", "parts queued for upload when each part was committed"),
    ("Prompt tokens per row", "histogram over rows without error"),
    ("Output tokens per row", "histogram over rows without error (all completions of a row)"),
)
MAX_LINES = 10  # more workers than this: only the job's total is drawn
WIDTH, HEIGHT, DPI = 12, 14, 100


def render_png(tl: Timeline, facts: RowFacts, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")  # before pyplot: no display on cluster nodes
    import matplotlib.pyplot as plt

    scale, unit = _time_unit(tl.end)
    fig, axes = plt.subplots(4, 2, figsize=(WIDTH, HEIGHT), dpi=DPI)
    ax = list(axes.flat)
    for a, (name, _) in zip(ax, PANELS):
        a.set_title(name)
        a.grid(True, alpha=0.3)
    if tl.workers:
        _rates(ax[0], tl, "rows_per_second", scale)
        _rates(ax[1], tl, "output_tokens_per_second", scale)
        _steps(ax[2], tl, "rows_cumulative", scale)
        _steps(ax[3], tl, "errors_cumulative", scale)
        _steps(ax[4], tl, "cache_hit_pct", scale, marker="o")
        _steps(ax[5], tl, "upload_backlog", scale)
        ax[4].set_ylim(0, 100)
        ax[0].legend(title="worker", fontsize=8)
        for a in ax[:6]:
            a.set_xlabel(f"time since start ({unit})")
            a.set_xlim(0, tl.end / scale)
            a.set_ylim(bottom=0)
    else:
        for a in ax[:6]:
            a.text(0.5, 0.5, "no committed parts yet", ha="center", va="center", transform=a.transAxes)
    _histogram(ax[6], facts.prompt_tokens, "prompt tokens")
    _histogram(ax[7], facts.output_tokens, "output tokens")
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _time_unit(span: float) -> tuple[float, str]:
    return (1.0, "s") if span < 180 else ((60.0, "min") if span < 3 * 3600 else (3600.0, "h"))


def _drawn(tl: Timeline) -> Sequence:
    return tl.workers if len(tl.workers) <= MAX_LINES else []


def _rates(ax, tl: Timeline, field: str, scale: float) -> None:
    x = tl.bin_centres / scale
    for a, b in tl.engine_starts.values():
        ax.axvspan(max(a, 0) / scale, b / scale, color="0.85", zorder=0)
    for w in _drawn(tl):
        ax.plot(x, getattr(w, field), linewidth=1.5, label=w.worker)
    if len(tl.workers) > 1:
        ax.plot(x, tl.total(field), color="black", linewidth=2, label=f"all {len(tl.workers)} workers")


def _steps(ax, tl: Timeline, field: str, scale: float, marker: str | None = None) -> None:
    for w in _drawn(tl):
        ax.step([t / scale for t in w.t], getattr(w, field), where="post", marker=marker, markersize=3,
                linewidth=1.5, label=w.worker)
    if not _drawn(tl):
        ax.text(0.5, 0.5, f"{len(tl.workers)} workers: see the tables", ha="center", va="center", transform=ax.transAxes)


def _histogram(ax, counts: np.ndarray, what: str) -> None:
    nonzero = np.flatnonzero(counts)
    if not nonzero.size:
        ax.text(0.5, 0.5, "no rows yet", ha="center", va="center", transform=ax.transAxes)
        return
    lo, hi = int(nonzero[0]), int(nonzero[-1])
    edges = np.arange(lo, hi + 2) - 0.5 if hi - lo < 40 else np.linspace(lo, hi + 1, 41)
    from matplotlib.ticker import MaxNLocator

    ax.hist(np.arange(len(counts)), bins=edges, weights=counts, color="tab:blue", edgecolor="white")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"{what} per row (min {lo:,}, max {hi:,})")
    ax.set_ylabel("rows")
