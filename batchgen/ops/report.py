"""`batchgen report`: the morning-after view of a job, as a PNG and one self-contained HTML page.

What it reads, and why it stays fast on a job of millions of rows:
- the output folder's state as `status` reads it: the part listing, one small stats file per part,
  the workers' summaries, `_SUCCESS.json` (and the input's footers for row totals);
- four small columns of every part (finish reason, error, prompt and output token counts; the text
  columns are never read), plus the id column of parts holding error rows (rowfacts.py).

The header (what ran, on what, how long, how it ended, what it cost) comes from the summaries
(runfacts.py); the charts from the stats rows (timeline.py, charts.py); the tables from both.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from batchgen.io.layout import REPORT_HTML, REPORT_PNG
from batchgen.io.store import Store
from batchgen.job.spec import JobSpec
from batchgen.ops import page
from batchgen.ops.charts import render_png
from batchgen.ops.rowfacts import SAMPLE_IDS, RowFacts, read_row_facts
from batchgen.ops.runfacts import RunFacts, engine_starts, gather_run_facts
from batchgen.ops.status import JobStatus, duration, load_status
from batchgen.ops.timeline import Timeline, build_timeline

UNITS_SHOWN, WORKERS_SHOWN, ERRORS_SHOWN = 500, 200, 20


@dataclass
class Report:
    png: bytes
    html: str
    lines: list[str]
    header: list[tuple[str, str]]
    timeline: Timeline
    rows: RowFacts
    run: RunFacts


def make_report(spec: JobSpec, gpu_hour_price: float | None = None) -> Report:
    st, state = load_status(spec)
    run = gather_run_facts(spec, st, state, gpu_hour_price)
    rows = read_row_facts(Store.open(spec.output.path, spec.output.storage),
                          {(s["unit"], s["seq"]) for s in state.stats}, spec.input.id_column)
    tl = build_timeline(state.stats, engine_starts(run))
    png = render_png(tl, rows, f"batchgen: {st.job}")
    header = header_rows(st, run, rows)
    read = (f"{len(state.stats):,} stats rows and {sum(r.summary is not None for r in run.runs)} worker summaries; "
            f"columns {', '.join(('finish_reason', 'error', 'prompt_tokens', 'output_tokens'))} of {rows.parts:,} parts "
            f"({rows.rows:,} rows, {rows.read_bytes / 1e6:,.2f} MB of column data) in {rows.seconds:.2f} s, "
            f"plus the id column of the parts holding error rows.")
    html = page.render_page(f"batchgen report: {st.job}", header, png, _sections(st, run, rows), read)
    lines = [f"{k:<14} {v}" for k, v in header] + [f"finish reasons {_finish_line(rows)}"]
    return Report(png=png, html=html, lines=lines, header=header, timeline=tl, rows=rows, run=run)


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


# -- the header --------------------------------------------------------------------------------------

def seconds(value: float | None) -> str:
    """A duration as the summaries give it (seconds, one decimal), with minutes/hours when long."""
    if value is None:
        return "-"
    return f"{value:,.1f} s" + (f" ({duration(value)})" if value >= 120 else "")


def amount(value: float) -> str:
    """Hours and money: cents or tenths where large, four significant digits where small (a test job's cost)."""
    return f"{value:,.2f}" if value >= 100 else f"{value:.4g}"


def header_rows(st: JobStatus, run: RunFacts, rows: RowFacts) -> list[tuple[str, str]]:
    of_total = f" of {st.rows_total:,}" if st.rows_total is not None else ""
    share = f" ({st.errors / st.rows:.2%})" if st.rows else ""
    states = _worker_states([r for r in run.runs if not r.node])
    when = f" at {_clock(run.finished_at)}" if run.finished_at else ""
    rate, tok = run.rows_per_second, run.output_tokens_per_second
    prompt = sum(w.prompt_tokens for w in st.workers)
    cached = sum(w.cached_tokens for w in st.workers)
    out_tokens = sum(w.output_tokens for w in st.workers)
    leaves = [r for r in run.runs if not r.node]
    kind = "GPU" if run.on_gpu else "device"
    rows_out = [
        ("job", st.job), ("output", st.output),
        ("state", (f"complete{when}" if st.complete else "incomplete") + f" | {states}"),
        ("model", run.model), ("engine", ", ".join(run.engines) or "-"),
        ("device", f"{', '.join(run.devices) or '-'}; {len(leaves)} worker(s) x {run.devices_per_worker} "
                   f"{'GPU' if run.on_gpu else 'device'}(s) each ({run.devices_how})"),
        ("rows", f"{st.rows:,}{of_total} committed, {st.errors:,} error rows{share}"),
        ("wall time", seconds(run.wall_seconds)), ("engine start", seconds(run.engine_start_seconds)),
        ("generate", seconds(run.generate_seconds)),
        ("throughput", f"{rate:,.2f} rows/s, {tok:,.1f} output tok/s while generating" if rate is not None else "-"),
        ("tokens", f"prompt {prompt:,} ({cached / prompt if prompt else 0:.1%} from the prefix cache), output {out_tokens:,}"),
        ("committed over", f"{seconds(st.last_commit - st.started) if st.started is not None and st.last_commit else '-'}"
                           " from the first part's start to the last commit (time between runs included)"),
        (f"{kind}-hours", f"{amount(run.device_hours)} = sum over workers of {kind}s x (wall time of the last run + "
                          "time spent on parts committed by earlier runs, from their stats)"),
    ]
    cost = run.cost(out_tokens)
    if cost is None:
        rows_out.append(("cost", f"pass --gpu-hour-price to price the {kind}-hours"))
    else:
        per = f"${amount(cost[1])} per 1M output tokens" if cost[1] is not None else "no output tokens"
        rows_out.append(("cost", f"${amount(cost[0])} at ${amount(run.gpu_hour_price)} per {kind}-hour; {per}"))
    rows_out += [("note", n) for n in run.notes + st.notes]
    return rows_out


def _worker_states(runs: list, named: int = 4) -> str:
    """Each worker's state, or with many workers how many are in each state (the workers table names them)."""
    if not runs:
        return "no worker has committed yet"
    if len(runs) <= named:
        return "; ".join(f"{r.worker} {r.state}" for r in runs)
    counts = Counter(r.state for r in runs)
    return f"{len(runs)} workers: " + "; ".join(f"{n} {state}" for state, n in counts.most_common())


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def _finish_line(rows: RowFacts) -> str:
    ok = sum(rows.finish.values())
    parts = [f"{reason} {n:,} of {ok:,}" for reason, n in rows.finish.most_common()]
    return "; ".join(parts) + (f"; {rows.error_rows:,} error rows" if rows.error_rows else "") if parts or rows.error_rows else "-"


# -- the tables --------------------------------------------------------------------------------------

def _sections(st: JobStatus, run: RunFacts, rows: RowFacts) -> list[tuple[str, str]]:
    ok = sum(rows.finish.values())
    finish = [[reason, f"{n:,}", f"{n / ok:.1%}", page.finish_meaning(reason)] for reason, n in rows.finish.most_common()]
    kinds = sorted(rows.errors.values(), key=lambda e: -e.count)
    errors = [[e.kind, f"{e.count:,}", ", ".join(e.ids) + (f" ({len(e.ids)} of {e.count:,})" if e.count > len(e.ids) else ""),
               e.message, e.fix] for e in kinds]
    by_worker = {w.worker: w for w in st.workers}
    workers = [_worker_row(r, by_worker.get(r.worker)) for r in run.runs]
    ordered = sorted(st.units, key=lambda u: (u.state == "done", u.unit))  # unfinished first: what one looks for
    units = [[u.unit, f"{u.rows:,}" + (f"/{u.rows_total:,}" if u.rows_total is not None else ""), f"{u.errors:,}",
              u.parts, u.state, ", ".join(u.workers)] for u in ordered]
    return [
        ("Finish reasons", page.paragraph(f"First completion of each of the {ok:,} rows without error.")
         + page.table(["reason", "rows", "share", "meaning"], finish, what="finished rows", text_columns=(3,))),
        ("Errors", page.table(["kind", "rows", f"sample ids (up to {SAMPLE_IDS})", "first message", "fix"], errors,
                              limit=ERRORS_SHOWN, what="kinds of error", more=", the most frequent first",
                              text_columns=(2, 3, 4))),
        ("Workers", page.table(["worker", "state", "rows", "errors", "parts", "rows/s", "out tok/s", "cache hit", "wall",
                                "engine start", "generate", "device", "devices", "device time"], workers,
                               limit=WORKERS_SHOWN, what="workers")),
        ("Work units", page.table(["unit", "rows", "errors", "parts", "state", "workers"], units, limit=UNITS_SHOWN,
                                  what="work units", more=", unfinished first (`batchgen status --all` lists every unit)")),
    ]


def _worker_row(r, w) -> list:
    s = r.summary or {}
    busy = [f"{w.rows:,}", f"{w.errors:,}", w.parts, f"{w.rows_per_second:,.2f}", f"{w.output_tokens_per_second:,.1f}",
            f"{w.cache_hit_rate:.1%}"] if w else ["-"] * 6
    return [r.worker, "node (its engines are listed as workers)" if r.node else r.state, *busy,
            seconds(s.get("wall_seconds")), seconds(s.get("engine_start_seconds")), seconds(s.get("generate_seconds")),
            s.get("device", "-"), "-" if r.node else r.devices, "-" if r.node else seconds(r.device_seconds)]
