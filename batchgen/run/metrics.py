"""Prometheus metrics of one worker: the node_exporter textfile format, written or pushed.

Batch jobs are not scraped while they run the way servers are; the conventions for them are a
`.prom` file that node_exporter's textfile collector picks up, or a push to a Pushgateway. Both get
the same text, refreshed at every commit and at the end. A monitoring hiccup never fails the job:
failures are logged (at most once a minute) and the run goes on.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from batchgen.run.stats import Counters

log = logging.getLogger("batchgen")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_RETRY_AFTER_FAILURE = 60.0

# name -> (type, help)
_METRICS: dict[str, tuple[str, str]] = {
    "batchgen_rows_share": ("gauge", "Rows in this worker's share of the job."),
    "batchgen_rows_done": ("gauge", "Rows of this worker's share committed so far, earlier runs included."),
    "batchgen_rows_generated_total": ("counter", "Rows committed by this run."),
    "batchgen_errors_total": ("counter", "Error rows committed by this run."),
    "batchgen_prompt_tokens_total": ("counter", "Prompt tokens of the rows committed by this run."),
    "batchgen_cached_tokens_total": ("counter", "Prompt tokens served from the prefix cache."),
    "batchgen_output_tokens_total": ("counter", "Generated tokens of the rows committed by this run."),
    "batchgen_prefix_cache_hit_ratio": ("gauge", "Cached prompt tokens / prompt tokens in this run."),
    "batchgen_rows_per_second": ("gauge", "Rows committed per second since this run started."),
    "batchgen_output_tokens_per_second": ("gauge", "Output tokens committed per second since this run started."),
    "batchgen_last_commit_timestamp_seconds": ("gauge", "Unix time of this worker's last commit (0: none yet)."),
    "batchgen_running": ("gauge", "1 while this worker runs, 0 once it stopped."),
    "batchgen_job_complete": ("gauge", "1 once the whole job is committed (_SUCCESS.json written)."),
}


@dataclass
class WorkerMetrics:
    """What a worker reports; `counters` cover this run only (counters reset with the process)."""

    job: str
    worker: str
    rows_share: int
    rows_skipped: int
    started: float = field(default_factory=time.time)
    counters: Counters = field(default_factory=Counters)
    last_commit: float = 0.0
    running: bool = True
    complete: bool = False

    def values(self, now: float | None = None) -> dict[str, float]:
        c = self.counters
        elapsed = max((now or time.time()) - self.started, 1e-9)
        return {
            "batchgen_rows_share": self.rows_share,
            "batchgen_rows_done": self.rows_skipped + c.rows,
            "batchgen_rows_generated_total": c.rows,
            "batchgen_errors_total": c.errors,
            "batchgen_prompt_tokens_total": c.prompt_tokens,
            "batchgen_cached_tokens_total": c.cached_tokens,
            "batchgen_output_tokens_total": c.output_tokens,
            "batchgen_prefix_cache_hit_ratio": c.cache_hit_rate,
            "batchgen_rows_per_second": c.rows / elapsed,
            "batchgen_output_tokens_per_second": c.output_tokens / elapsed,
            "batchgen_last_commit_timestamp_seconds": self.last_commit,
            "batchgen_running": int(self.running),
            "batchgen_job_complete": int(self.complete),
        }


def render(m: WorkerMetrics, now: float | None = None) -> str:
    """The Prometheus text exposition format (0.0.4), one sample per metric.

    The labels are `job_name` and `worker`, not `job`/`instance`: those belong to the scrape target
    (node_exporter) or the Pushgateway's grouping key, and a clash makes the Pushgateway refuse the push.
    """
    labels = f'job_name="{_escape(m.job)}",worker="{_escape(m.worker)}"'
    lines = []
    for name, value in m.values(now).items():
        kind, help_text = _METRICS[name]
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name}{{{labels}}} {_number(value)}"]
    return "\n".join(lines) + "\n"


def write_textfile(path: str, text: str) -> None:
    """Replace `path` atomically: node_exporter must never read a half-written file.

    The temporary name does not end in .prom, so the collector ignores it while it is written.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def push_url(gateway: str, worker: str) -> str:
    return f"{gateway.rstrip('/')}/metrics/job/batchgen/instance/{urllib.parse.quote(worker, safe='')}"


def push(gateway: str, worker: str, text: str, timeout: float = 5.0) -> None:
    """PUT replaces this worker's whole group, so a metric that disappears does not linger."""
    req = urllib.request.Request(push_url(gateway, worker), data=text.encode(), method="PUT",
                                 headers={"Content-Type": CONTENT_TYPE})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        resp.read()


class MetricsSink:
    """Where a worker's metrics go (textfile and/or Pushgateway), tolerant of monitoring outages."""

    def __init__(self, textfile: str | None, pushgateway: str | None):
        self.textfile, self.pushgateway = textfile, pushgateway
        self._quiet_until = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.textfile or self.pushgateway)

    def publish(self, m: WorkerMetrics, *, final: bool = False) -> None:
        """Write and push; a failure is logged, never raised. `final` pushes even right after a failure."""
        now = time.time()
        if not self.enabled or (not final and now < self._quiet_until):
            return
        text = render(m, now)
        try:
            if self.textfile:
                write_textfile(self.textfile, text)
            if self.pushgateway:
                push(self.pushgateway, m.worker, text)
        except (OSError, urllib.error.URLError) as e:
            self._quiet_until = now + _RETRY_AFTER_FAILURE
            log.warning("metrics not published (%s); the job goes on, next try in %.0fs", e, _RETRY_AFTER_FAILURE)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))
