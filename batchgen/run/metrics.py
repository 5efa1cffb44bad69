"""Prometheus metrics of one worker, through prometheus_client: a textfile written, or a Pushgateway push.

Batch jobs are not scraped while they run the way servers are; the conventions for them are a
`.prom` file that node_exporter's textfile collector picks up, or a push to a Pushgateway. Both get
the same registry, refreshed at every commit and at the end. A monitoring hiccup never fails the job:
failures are logged (at most once a minute) and the run goes on.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics, generate_latest, push_to_gateway, write_to_textfile

from batchgen.run.stats import Counters

log = logging.getLogger("batchgen")
_RETRY_AFTER_FAILURE = 60.0
# A `_created` sample per counter is noise for a batch job (its start is batchgen_running's first push).
disable_created_metrics()
# The labels are `job_name` and `worker`, not `job`/`instance`: those belong to the scrape target
# (node_exporter) or the Pushgateway's grouping key, and a clash makes the Pushgateway refuse the push.
LABELS = ("job_name", "worker")
PUSH_JOB = "batchgen"


class WorkerMetrics:
    """What a worker reports, in its own registry; counters cover this run only (they reset with the process)."""

    def __init__(self, job: str, worker: str, rows_share: int, rows_skipped: int, *,
                 clock: Callable[[], float] = time.time):
        self.worker, self.clock = worker, clock
        self.started = clock()
        self.counters = Counters()  # this run's totals, for the ratios below
        self.registry = CollectorRegistry()
        labels = {"job_name": job, "worker": worker}

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, LABELS, registry=self.registry).labels(**labels)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, LABELS, registry=self.registry).labels(**labels)

        gauge("batchgen_rows_share", "Rows in this worker's share of the job.").set(rows_share)
        self.rows_done = gauge("batchgen_rows_done", "Rows of this worker's share committed so far, earlier runs included.")
        self.rows_done.set(rows_skipped)
        self.rows = counter("batchgen_rows_generated_total", "Rows committed by this run.")
        self.errors = counter("batchgen_errors_total", "Error rows committed by this run.")
        self.prompt_tokens = counter("batchgen_prompt_tokens_total", "Prompt tokens of the rows committed by this run.")
        self.cached_tokens = counter("batchgen_cached_tokens_total", "Prompt tokens served from the prefix cache.")
        self.output_tokens = counter("batchgen_output_tokens_total", "Generated tokens of the rows committed by this run.")
        # Ratios are computed when the registry is collected (written or pushed), from this run's totals.
        gauge("batchgen_prefix_cache_hit_ratio", "Cached prompt tokens / prompt tokens in this run.").set_function(
            lambda: self.counters.cache_hit_rate)
        gauge("batchgen_rows_per_second", "Rows committed per second since this run started.").set_function(
            lambda: self.counters.rows / self._elapsed())
        gauge("batchgen_output_tokens_per_second", "Output tokens committed per second since this run started.").set_function(
            lambda: self.counters.output_tokens / self._elapsed())
        self.upload_backlog = gauge("batchgen_upload_backlog_parts",
                                    "Parts finished by generation and waiting to be written, at the last commit.")
        self.last_commit = gauge("batchgen_last_commit_timestamp_seconds", "Unix time of this worker's last commit (0: none yet).")
        self.running = gauge("batchgen_running", "1 while this worker runs, 0 once it stopped.")
        self.running.set(1)
        self.complete = gauge("batchgen_job_complete", "1 once the whole job is committed (_SUCCESS.json written).")

    def _elapsed(self) -> float:
        return max(self.clock() - self.started, 1e-9)

    def committed(self, part: Counters, backlog: int) -> None:
        """A part was committed: its rows and tokens, and the parts still queued behind it."""
        self.counters = self.counters.merge(part)
        self.rows_done.inc(part.rows)
        for metric, value in ((self.rows, part.rows), (self.errors, part.errors), (self.prompt_tokens, part.prompt_tokens),
                              (self.cached_tokens, part.cached_tokens), (self.output_tokens, part.output_tokens)):
            metric.inc(value)
        self.upload_backlog.set(backlog)
        self.last_commit.set(self.clock())

    def stopped(self, complete: bool) -> None:
        self.running.set(0)
        self.complete.set(int(complete))
        self.upload_backlog.set(0)


def render(m: WorkerMetrics) -> str:
    """The Prometheus text exposition format, as written to the textfile and pushed."""
    return generate_latest(m.registry).decode()


class MetricsSink:
    """Where a worker's metrics go (textfile and/or Pushgateway), tolerant of monitoring outages."""

    def __init__(self, textfile: str | None, pushgateway: str | None, timeout: float = 5.0):
        self.textfile, self.pushgateway, self.timeout = textfile, pushgateway, timeout
        self._quiet_until = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.textfile or self.pushgateway)

    def publish(self, m: WorkerMetrics, *, final: bool = False) -> None:
        """Write and push; a failure is logged, never raised. `final` pushes even right after a failure."""
        now = time.time()
        if not self.enabled or (not final and now < self._quiet_until):
            return
        try:
            if self.textfile:
                # The temporary file (same folder, name not ending in .prom) is renamed over the old one:
                # node_exporter never reads a half-written file.
                os.makedirs(os.path.dirname(os.path.abspath(self.textfile)), exist_ok=True)
                write_to_textfile(self.textfile, m.registry)
            if self.pushgateway:
                # PUT replaces this worker's whole group, so a metric that disappears does not linger.
                push_to_gateway(self.pushgateway.rstrip("/"), job=PUSH_JOB, registry=m.registry,
                                grouping_key={"instance": m.worker}, timeout=self.timeout)
        except OSError as e:  # urllib's URLError/HTTPError are OSErrors
            self._quiet_until = now + _RETRY_AFTER_FAILURE
            log.warning("metrics not published (%s); the job goes on, next try in %.0fs", e, _RETRY_AFTER_FAILURE)
