"""The loop that joins reader, engine and committer for one worker; signals; progress.

    prepare()  everything that can fail without an engine: inputs, columns, output, resume state
    run()      start the engine, feed it continuously, commit parts, summarize
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from batchgen.checkpoint import META, SUCCESS, Ledger, check_job_manifest, recorded_plan
from batchgen.claim import FEEDER_OPTIONS, Claimer, start_claimer
from batchgen.committer import Committer, PartSink
from batchgen.engine import Engine, start_engine
from batchgen.engine.abort import kill_children
from batchgen.errors import EXIT_INTERRUPTED, Interrupted
from batchgen.feeder import Feeder
from batchgen.io.parts import OutputRow, output_schema
from batchgen.io.reader import ROW_INDEX, check_columns
from batchgen.io.store import Store
from batchgen.jobfile import fingerprint
from batchgen.observers import RunObserver
from batchgen.plan import Unit, assign, discover_shards, plan_job
from batchgen.progress import Progress
from batchgen.prompts import Renderer, Request
from batchgen.spec import JobSpec
from batchgen.stats import Summary
from batchgen.tokenizer import load_tokenizer

log = logging.getLogger("batchgen")
# A second SIGTERM/SIGINT sooner than this after the first is a duplicate delivery, not "exit now".
SAME_NOTICE_SECONDS = 1.0


@dataclass
class RunOptions:
    rank: int = 0
    world_size: int = 1
    worker: str = "w0"
    force: bool = False
    engine_factory: Callable[[JobSpec], Engine] = start_engine
    # Unit filter for engines sharing a node (set by the node supervisor); None = this rank's share.
    units: list[str] | None = None
    # Take units one at a time under leases (an engine of a node; always on for runtime.elastic).
    claim: bool = False


@dataclass
class Prepared:
    all_units: list[Unit]
    units: list[Unit]
    store: Store
    ledger: Ledger
    sink: PartSink
    tokenizer: object
    skipped: int = 0
    extra: dict = field(default_factory=dict)
    observer: RunObserver | None = None  # OpenAI output files and metrics, after each commit


class Runner:
    def __init__(self, spec: JobSpec, opts: RunOptions | None = None):
        self.spec, self.opts = spec, opts or RunOptions()
        self._stop_deadline: float | None = None
        self._hard_stop = False
        self._last_result_at: float | None = None  # monotonic time of the last row out of the engine

    # -- before the engine ---------------------------------------------------------------------
    def prepare(self) -> Prepared:
        spec = self.spec
        shards = discover_shards(spec.input)
        schema = None
        for shard in shards:
            schema = check_columns(spec.input, shard, spec.input_columns())
        store = Store.open(spec.output.path, spec.output.storage)
        plan = plan_job(spec.input, shards, recorded_plan(store))
        all_units = plan.units
        mine = list(all_units) if spec.runtime.elastic else assign(all_units, self.opts.rank, self.opts.world_size)
        if self.opts.units is not None:
            wanted = set(self.opts.units)
            mine = [u for u in mine if u.key in wanted]
        tokenizer = load_tokenizer(spec.model)
        if spec.runtime.engine == "vllm":  # option names are checked before any engine memory is taken
            from batchgen.engine.vllm import check_engine_kwargs, check_sampling_extra

            check_engine_kwargs(spec.model)
            check_sampling_extra(spec.sampling)
        check_job_manifest(store, spec, self.opts.force, plan.rule)
        ledger = Ledger(store, mine)
        ledger.load()
        sink = PartSink(schema=output_schema(spec, schema), id_column=spec.input.id_column,
                        compression=spec.output.compression, worker=self.opts.worker, job_fingerprint=fingerprint(spec)[0])
        total = sum(u.rows for u in mine)
        observer = RunObserver(spec, store, self.opts.worker, total, total - ledger.remaining())
        sink.on_part = observer.on_part
        return Prepared(all_units=all_units, units=mine, store=store, ledger=ledger, sink=sink,
                        tokenizer=tokenizer, skipped=total - ledger.remaining(), observer=observer)

    # -- the run -------------------------------------------------------------------------------
    def run(self, prep: Prepared | None = None) -> Summary:
        t_start = time.monotonic()
        prep = prep or self.prepare()
        spec = self.spec
        summary = Summary(job=spec.name or "job", worker=self.opts.worker, model=spec.model.path, engine=spec.runtime.engine,
                          engine_version="-", device="-", units=len(prep.units),
                          rows_total=sum(u.rows for u in prep.units), rows_skipped=prep.skipped)
        if prep.ledger.remaining() == 0:
            summary.complete = self._mark_complete_if_done(prep, summary)
            summary.wall_seconds = time.monotonic() - t_start
            if prep.observer is not None:
                prep.observer.finish(summary)
            return summary

        engine = self._start_engine()
        summary.engine_version, summary.device = engine.info.version, engine.info.device
        summary.engine_start_seconds = engine.info.start_seconds
        renderer = Renderer(spec, prep.tokenizer, engine.max_prompt_tokens)
        claimer = start_claimer(spec, prep.store, prep.ledger, prep.units, self.opts.worker) \
            if spec.runtime.elastic or self.opts.claim else None
        feeder = Feeder(spec, claimer.units() if claimer else prep.units, prep.ledger.done_mask, renderer,
                        [*spec.input_columns()], **(dict(FEEDER_OPTIONS, on_unit_fed=claimer.fed) if claimer else {}))
        committer = Committer(prep.ledger, prep.sink, spec.checkpoint.upload_queue)
        progress = Progress(spec.runtime.progress, prep.ledger.remaining(), spec.name or "batchgen", spec.runtime.progress_seconds)
        # One request in flight per engine slot: on an H100, S ran at 255 req/s with 512 in flight and
        # 234 with 1024 (docs/benchmarks.md); the engine refills finished slots within the same step.
        window = spec.runtime.window or (engine.info.max_num_seqs or 64)
        old_handlers = self._install_signals()
        t_gen = time.monotonic()
        summary.generate_started_at = time.time()
        try:
            feeder.start()
            self._loop(engine, feeder, committer, progress, window, claimer)
        finally:
            self._restore_signals(old_handlers)
            feeder.stop()
            if claimer:
                claimer.stop()
            # Generation ends with the last result, not when this worker stops waiting for the node's
            # other engines to commit their last units (it stays in case one dies and leaves them).
            summary.generate_seconds = (self._last_result_at or time.monotonic()) - t_gen
            summary.generate_ended_at = summary.generate_started_at + summary.generate_seconds
            progress.close()
            engine.close()
            try:
                committer.close()
            finally:
                if claimer:
                    claimer.close()  # after the last commit: finished units are marked done, the rest released
                summary.counters = committer.committed
                summary.upload_retries = prep.store.retry.retried
                summary.upload_wait_seconds = committer.wait_seconds
                summary.wall_seconds = time.monotonic() - t_start
                summary.interrupted = self._stop_deadline is not None
                if not committer.failed:  # a store that just failed would only fail this write too, after more retries
                    self._save_summary(prep.store, summary)
                if prep.observer is not None:  # metrics only: must not raise over the error being handled
                    prep.observer.finish(summary, repair=False)
        if summary.interrupted:
            raise Interrupted(f"stopped on a signal after committing {summary.counters.rows} rows this run",
                              fix="rerun the same command to resume")
        summary.complete = self._mark_complete_if_done(prep, summary)
        if prep.observer is not None:
            prep.observer.finish(summary)
        return summary

    def _loop(self, engine: Engine, feeder: Feeder, committer: Committer, progress: Progress, window: int,
              claimer: Claimer | None = None) -> None:
        spec = self.spec
        pending: deque[Request] = deque()
        inflight: dict[str, Request] = {}
        finished: dict[str, list[OutputRow]] = {}
        n_finished, last_commit = 0, time.monotonic()

        def finish(rows: list[OutputRow], unit_of: list[str]) -> None:
            nonlocal n_finished
            self._last_result_at = time.monotonic()
            for row, unit in zip(rows, unit_of):
                finished.setdefault(unit, []).append(row)
            n_finished += len(rows)
            progress.update(len(rows), sum(sum(r.output_tokens) for r in rows), sum(r.error is not None for r in rows), committer.note())

        while True:
            stopping = self._stop_deadline is not None
            # 1) Top up the window: new requests go in while the engine is mid-flight.
            while not stopping and engine.in_flight() < window:
                if not pending:
                    chunk = feeder.get(timeout=None if engine.in_flight() else 0.05)
                    if chunk is None:
                        break
                    pending.extend(chunk)
                    continue
                req = pending.popleft()
                error = req.error or engine.add(req)
                if error:
                    finish([_error_row(req, error)], [req.unit])
                else:
                    inflight[req.key] = req
            # 2) One engine step; collect what finished in it.
            if engine.in_flight():
                done = engine.step()
                finish([_output_row(inflight.pop(c.key), c) for c in done], [c.key.rsplit("#", 1)[0] for c in done])
            elif not stopping and (pending or not feeder.finished):
                pass  # waiting for the reader (it blocks in feeder.get above with a short timeout)
            else:
                break
            # 3) Stop early on a signal once in-flight rows are done or the grace period is over.
            if stopping and (self._hard_stop or time.monotonic() >= self._stop_deadline):
                aborted = engine.abort_all()
                log.warning("grace period over: %d in-flight rows dropped (they will be redone on resume)", len(aborted))
                break
            # 4) Checkpoint every N rows or T seconds, or when idle waiting on other workers' units (they may wait on ours).
            idle = claimer is not None and claimer.waiting and not engine.in_flight()
            if n_finished >= spec.checkpoint.every_rows or (finished and (idle or time.monotonic() - last_commit >= spec.checkpoint.every_seconds)):
                self._flush(finished, committer)
                n_finished, last_commit = 0, time.monotonic()
        self._flush(finished, committer)

    @staticmethod
    def _flush(finished: dict[str, list[OutputRow]], committer: Committer) -> None:
        for unit, rows in finished.items():
            if rows:
                committer.submit(unit, rows)
        finished.clear()

    # -- signals -------------------------------------------------------------------------------
    def _start_engine(self) -> Engine:
        """The engine. A SIGTERM/SIGINT while it starts (minutes on a GPU: compilation, CUDA graphs) ends
        the process at once with exit 75: no row is in flight and no unit is claimed yet, so there is
        nothing to finish or commit. (Exiting from the handler is deliberate: vLLM waits for its engine
        core in a zmq poll that swallows exceptions raised by signal handlers.)"""
        def stop_now(signum: int, _frame: object) -> None:
            killed = kill_children()
            log.warning("%s while the engine was starting: stopped (%d engine processes ended, nothing was in "
                        "flight); rerun the same command to resume", signal.Signals(signum).name, killed)
            for handler in logging.getLogger().handlers + log.handlers:
                handler.flush()
            os._exit(EXIT_INTERRUPTED)

        old = self._set_handlers(stop_now)
        try:
            return self.opts.engine_factory(self.spec)
        finally:
            self._restore_signals(old)

    def _install_signals(self) -> dict:
        def handler(signum: int, _frame: object) -> None:
            name = signal.Signals(signum).name
            if self._stop_deadline is None:
                grace = self.spec.runtime.grace_seconds
                self._stop_deadline = time.monotonic() + grace
                log.warning("%s: no new rows; finishing in-flight rows for up to %.0fs, then committing. "
                            "Send it again to commit what is finished and exit at once.", name, grace)
            elif time.monotonic() < self._stop_deadline - self.spec.runtime.grace_seconds + SAME_NOTICE_SECONDS:
                # A scheduler signals every process and a supervisor forwards it too: one notice, not two.
                log.info("%s again within %.0fs: taken as the same stop notice", name, SAME_NOTICE_SECONDS)
            else:
                self._hard_stop = True
                log.warning("%s again: committing finished rows and exiting now", name)

        return self._set_handlers(handler)

    @staticmethod
    def _set_handlers(handler: Callable[[int, object], None]) -> dict:
        """`handler` for SIGTERM and SIGINT; returns the previous handlers for _restore_signals."""
        old = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                old[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread (e.g. embedded use): the caller handles signals
                pass
        return old

    @staticmethod
    def _restore_signals(old: dict) -> None:
        for sig, h in old.items():
            signal.signal(sig, h)

    # -- after ---------------------------------------------------------------------------------
    def _save_summary(self, store: Store, summary: Summary) -> None:
        store.put(f"{META}/summary-{summary.worker}.json", json.dumps(summary.as_dict(), indent=1).encode())

    def _mark_complete_if_done(self, prep: Prepared, summary: Summary) -> bool:
        """Write the completion record once every unit of the whole job (all ranks) is committed."""
        everyone = Ledger(prep.store, prep.all_units)
        everyone.load()
        if not everyone.complete():
            return False
        record = {"complete": True, "units": len(prep.all_units), "rows": sum(u.rows for u in prep.all_units),
                  "job": prep.sink.job_fingerprint, "finished_at": time.time(), "by": summary.worker}
        prep.store.put(SUCCESS, json.dumps(record, indent=1).encode())
        return True


def _output_row(req: Request, c) -> OutputRow:
    return OutputRow(id=req.id, row_index=req.row_index, seed=req.seed, texts=c.texts, finish_reasons=c.finish_reasons,
                     output_tokens=c.output_tokens, prompt_tokens=c.prompt_tokens, cached_tokens=c.cached_tokens,
                     error=c.error, passthrough=req.passthrough)


def _error_row(req: Request, error: str) -> OutputRow:
    return OutputRow(id=req.id, row_index=req.row_index, seed=req.seed, prompt_tokens=len(req.token_ids),
                     error=error, passthrough=req.passthrough)


__all__ = ["Runner", "RunOptions", "Prepared", "ROW_INDEX"]
