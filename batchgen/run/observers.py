"""What follows each commit besides the part itself: OpenAI batch output files and metrics.

The runner knows one object with two calls: `on_part` (from the commit thread, after a part and its
stats are committed) and `finish` (when the run ends, however it ends). Side files are derived from
committed parts, so they can always be rebuilt: `finish` writes any that a crash left missing.
"""

from __future__ import annotations

import io
import logging
import posixpath
import threading
import time
from typing import Any

import pyarrow.parquet as pq

from batchgen.io.layout import OPENAI, openai_file, openai_path, part_path
from batchgen.io.openai_batch import responses_jsonl
from batchgen.io.parts import OutputRow
from batchgen.io.store import Store
from batchgen.job.spec import JobSpec
from batchgen.run.metrics import MetricsSink, WorkerMetrics
from batchgen.run.stats import Counters, Summary
from batchgen.work.ledger import committed_parts

log = logging.getLogger("batchgen")


class RunObserver:
    def __init__(self, spec: JobSpec, store: Store, worker: str, rows_share: int, rows_skipped: int):
        self.spec, self.store = spec, store
        self.metrics = WorkerMetrics(job=spec.name or "job", worker=worker, rows_share=rows_share, rows_skipped=rows_skipped)
        self.sink = MetricsSink(spec.runtime.metrics_textfile, spec.runtime.metrics_pushgateway)
        self.model_name = posixpath.basename(spec.model.path.rstrip("/")) or spec.model.path
        self._lock = threading.Lock()
        self.sink.publish(self.metrics)

    def on_part(self, unit: str, seq: int, rows: list[OutputRow], backlog: int = 0) -> None:
        """Called by the committer once part `seq` of `unit` is committed (its writer thread), with the
        number of parts still queued behind it."""
        if self.spec.output.openai_batch_jsonl:
            self._write_openai(unit, seq, [_as_dict(r, self.spec.input.id_column) for r in sorted(rows, key=lambda r: r.row_index)])
        counters = Counters()
        counters.add_rows(rows)
        with self._lock:
            self.metrics.committed(counters, backlog)
            self.sink.publish(self.metrics)

    def finish(self, summary: Summary, repair: bool = True) -> None:
        """The run ended (done, interrupted or failed): final metrics; with `repair`, side files a crash left missing."""
        if repair and self.spec.output.openai_batch_jsonl:
            self._repair_openai()
        with self._lock:
            self.metrics.stopped(summary.complete)
            self.sink.publish(self.metrics, final=True)

    def _write_openai(self, unit: str, seq: int, rows: list[dict[str, Any]]) -> None:
        data = responses_jsonl(rows, self.spec.input.id_column, self.model_name, int(time.time()))
        self.store.put(openai_path(unit, seq), data)

    def _repair_openai(self) -> None:
        """A part committed just before a kill has no JSONL yet: write it from the part (same content)."""
        have = set(self.store.listdir(OPENAI))
        for unit, seq in sorted(committed_parts(self.store)):
            if openai_file(unit, seq) in have:
                continue
            table = pq.read_table(io.BytesIO(self.store.read_bytes(part_path(unit, seq))), use_threads=False)
            log.info("writing the missing OpenAI output of part %s", part_path(unit, seq))
            self._write_openai(unit, seq, table.to_pylist())


def _as_dict(r: OutputRow, id_column: str) -> dict[str, Any]:
    """An OutputRow in the shape of a part-file row (what responses_jsonl reads)."""
    ok = bool(r.texts)  # as parts.build_table: a generated row keeps its text even with an error (invalid JSON)
    extras = r.completion_extras or [{} for _ in r.texts]
    return {
        id_column: r.id, "text": r.texts[0] if ok else None,
        "finish_reason": r.finish_reasons[0] if ok and r.finish_reasons else None,
        "completions": [{"text": t, "finish_reason": f, "output_tokens": n, **x}
                        for t, f, n, x in zip(r.texts, r.finish_reasons, r.output_tokens, extras)] if ok else None,
        "prompt_tokens": r.prompt_tokens, "output_tokens": sum(r.output_tokens), "cached_tokens": r.cached_tokens,
        "seed": r.seed, "error": r.error,
    }
