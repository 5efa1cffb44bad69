"""One worker's run: start the engine, feed it continuously, commit parts, summarize.

The loop reads like vLLM's own busy loop, one named phase per line:

    while True:
        top_up      new requests go in while the engine is mid-flight (a bounded window)
        step        one engine step; finished rows are kept by unit until the next checkpoint
        grace       on a stop notice, end once in-flight rows are done or the grace period is over
        checkpoint  every N rows or T seconds, finished rows go to the committer thread as parts
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from batchgen.engine import Engine, start_engine
from batchgen.engine.abort import kill_children
from batchgen.engine.base import Completion, Request
from batchgen.errors import EXIT_INTERRUPTED, Interrupted
from batchgen.io.layout import SUCCESS, summary_path
from batchgen.io.parts import OutputRow
from batchgen.job.spec import JobSpec
from batchgen.run import signals
from batchgen.run.committer import Committer
from batchgen.run.feeder import Feeder
from batchgen.run.hostcpu import HostCpu
from batchgen.run.prepare import Prepared, prepare
from batchgen.run.progress import Progress
from batchgen.run.prompts import Renderer
from batchgen.run.stats import Summary
from batchgen.run.structured import finish_row
from batchgen.run.window import Window
from batchgen.run.worklock import WorkerLock
from batchgen.work.claim import Claimer
from batchgen.work.completion import completion_record
from batchgen.work.lease import LeaseBook
from batchgen.work.ledger import Ledger, foreign_rows_by_job
from batchgen.work.source import StaticShare, UnitSource

log = logging.getLogger("batchgen")


@dataclass
class RunOptions:
    rank: int = 0
    world_size: int = 1
    worker: str = "w0"
    force: bool = False
    engine_factory: Callable[[JobSpec], Engine] = start_engine
    # Take units one at a time under leases (an engine of a node; always on for runtime.elastic).
    claim: bool = False
    # This host's folder for the worker's lock and its engine processes' record (run.worklock); with it,
    # a watchdog ends the engine's processes if this one dies. None (library use): neither.
    state_dir: Path | None = None


@dataclass
class Flight:
    """What the loop holds between steps."""

    pending: deque[Request] = field(default_factory=deque)  # read, not yet in the engine
    inflight: dict[str, Request] = field(default_factory=dict)  # in the engine, by request key
    load: int = 0  # what the in-flight rows take of the window (Window.cost: their sequences, or rows)
    finished: dict[str, list[OutputRow]] = field(default_factory=dict)  # by unit, since the last checkpoint
    since_checkpoint: int = 0
    last_checkpoint: float = field(default_factory=time.monotonic)
    last_result_at: float | None = None  # monotonic time of the last row out of the engine


class Runner:
    def __init__(self, spec: JobSpec, opts: RunOptions | None = None):
        self.spec, self.opts = spec, opts or RunOptions()
        self.stop = signals.StopNotice(spec.runtime.grace_seconds)
        self.lock = WorkerLock(guard=False)

    def prepare(self) -> Prepared:
        o = self.opts
        return prepare(self.spec, rank=o.rank, world_size=o.world_size, worker=o.worker, force=o.force)

    # -- the run -------------------------------------------------------------------------------
    def run(self, prep: Prepared | None = None) -> Summary:
        t_start = time.monotonic()
        prep = prep or self.prepare()
        store = prep.store
        self.lock = WorkerLock.take(self.opts.state_dir, store.root if store.is_local else store.url, self.opts.worker)
        try:
            return self._run(prep, t_start)
        finally:
            self.lock.release()

    def _run(self, prep: Prepared, t_start: float) -> Summary:
        spec = self.spec
        summary = Summary.begin(spec, self.opts.worker, prep.units, prep.skipped)
        if prep.ledger.remaining() == 0:
            summary.complete = self._mark_complete_if_done(prep, summary)
            summary.wall_seconds = time.monotonic() - t_start
            prep.observer.finish(summary)
            return summary

        engine = self._start_engine(prep.engine_spec)
        summary.engine_version, summary.device = engine.info.version, engine.info.device
        summary.engine_start_seconds, summary.engine_ready_at = engine.info.start_seconds, time.time()
        summary.engine_options = dict(engine.info.options)
        source = self._unit_source(prep)
        renderer = Renderer(spec, prep.tokenizer, engine.max_prompt_tokens, image_placeholder=prep.image_placeholder)
        feeder = Feeder(spec, source, prep.ledger.done_mask, renderer, spec.input_columns(), prep.input)
        committer = Committer(prep.ledger, prep.sink, spec.checkpoint.upload_queue)
        progress = Progress.for_job(spec, prep.ledger.remaining())
        # Rows enough to fill the engine's sequence slots by default, each row counting its n: on an H100, S ran at
        # 255 req/s with 512 in flight and 234 with 1024, SYN at 92.4 with one engine's 1,024 slots and 79.9 with every
        # row in flight (docs/benchmarks.md). `auto` adds a reserve for short completions (run/window.py).
        window = Window.for_engine(engine.info.max_num_seqs, spec.runtime.window)
        flight = Flight()
        t_gen = time.monotonic()
        summary.generate_started_at = time.time()
        cpu = HostCpu()
        ok = False
        try:
            with signals.handling(self.stop.handler):
                feeder.start()
                self._loop(flight, engine, feeder, committer, progress, window, source)
            ok = True
            if window.auto:
                log.info("window auto: %d slots + a reserve of %d (%.1f sequences finished per step)",
                         window.slots, window.size - window.slots, window.finished_per_step)
        finally:
            feeder.stop()
            source.stop()
            # Generation ends with the last result, not when this worker stops waiting for the node's
            # other engines to commit their last units (it stays in case one dies and leaves them).
            summary.generate_seconds = (flight.last_result_at or time.monotonic()) - t_gen
            summary.generate_ended_at = summary.generate_started_at + summary.generate_seconds
            progress.close()
            summary.timeline = progress.timeline.points()
            summary.host_cpu = cpu.shares(summary.generate_seconds)  # before the engine's processes end
            engine.close()
            try:
                committer.close()
            finally:
                # The last part's commit, not this moment: the engine's shutdown above may outlast the final upload.
                summary.output_ended_at = committer.last_committed_at or time.time()
                source.close()  # after the last commit: finished units are marked done, the rest released
                summary.counters = committer.committed
                summary.upload_retries = prep.store.retry.retried
                summary.input_retries = prep.input.retry.retried
                summary.upload_wait_seconds = committer.wait_seconds
                summary.interrupted = self.stop.stopping
                if ok and not summary.interrupted and not committer.failed:
                    summary.complete = self._mark_complete_if_done(prep, summary)
                summary.wall_seconds = time.monotonic() - t_start
                if not committer.failed:  # a store that just failed would only fail this write too, after more retries
                    prep.store.put(summary_path(summary.worker), json.dumps(summary.as_dict(), indent=1).encode())
                # Metrics only on a failure (must not raise over the error being handled); side files too on success.
                prep.observer.finish(summary, repair=ok and not committer.failed)
        if summary.interrupted:
            raise Interrupted(f"stopped on a signal after committing {summary.counters.rows} rows this run",
                              fix="rerun the same command to resume")
        return summary

    def _unit_source(self, prep: Prepared) -> UnitSource:
        if self.spec.runtime.elastic or self.opts.claim:
            return Claimer(LeaseBook(prep.store, self.opts.worker, self.spec.runtime.lease_seconds), prep.ledger, prep.units)
        return StaticShare(prep.units)

    def _loop(self, f: Flight, engine: Engine, feeder: Feeder, committer: Committer, progress: Progress,
              window: Window, source: UnitSource) -> None:
        while True:
            # 1) Top up the window: new requests go in while the engine is mid-flight.
            if not self.stop.stopping:
                self._top_up(f, engine, feeder, window, progress, committer)
            # 2) One engine step; collect what finished in it.
            if engine.in_flight():
                done = [(f.inflight.pop(c.key), c) for c in engine.step()]
                freed = sum(window.cost(req) for req, _ in done)
                f.load -= freed
                window.observe(freed)
                if done:
                    self._finish(f, [(req.unit, _output_row(req, c)) for req, c in done], progress, committer)
            elif self.stop.stopping or (not f.pending and feeder.finished):
                break
            # (else: waiting for the reader; feeder.get in top_up blocks with a short timeout)
            # 3) Grace: on a stop notice, end once in-flight rows are done or the grace period is over.
            if self.stop.stopping and self.stop.grace_over():
                aborted = engine.abort_all()
                log.warning("grace period over: %d in-flight rows dropped (they will be redone on resume)", len(aborted))
                break
            # 4) Checkpoint every N rows or T seconds, or when idle waiting on other workers' units (they may wait on ours).
            if self._checkpoint_due(f, source.waiting and not engine.in_flight()):
                self._checkpoint(f, committer)
        self._checkpoint(f, committer)

    def _top_up(self, f: Flight, engine: Engine, feeder: Feeder, window: Window, progress: Progress,
                committer: Committer) -> None:
        while f.load < window.size:
            if not f.pending:
                chunk = feeder.get(timeout=None if engine.in_flight() else 0.05)
                if chunk is None:
                    return
                f.pending.extend(chunk)
                continue
            req = f.pending.popleft()
            error = req.error or engine.add(req)
            if error:
                self._finish(f, [(req.unit, _error_row(req, error))], progress, committer)
            else:
                f.inflight[req.key] = req
                f.load += window.cost(req)

    @staticmethod
    def _finish(f: Flight, rows: list[tuple[str, OutputRow]], progress: Progress, committer: Committer) -> None:
        f.last_result_at = time.monotonic()
        out_tokens = errors = 0
        for unit, row in rows:
            f.finished.setdefault(unit, []).append(row)
            out_tokens += sum(row.output_tokens)
            errors += row.error is not None
        f.since_checkpoint += len(rows)
        progress.update(len(rows), out_tokens, errors, committer.note())

    def _checkpoint_due(self, f: Flight, idle: bool) -> bool:
        c = self.spec.checkpoint
        if f.since_checkpoint >= c.every_rows:
            return True
        return bool(f.finished) and (idle or time.monotonic() - f.last_checkpoint >= c.every_seconds)

    @staticmethod
    def _checkpoint(f: Flight, committer: Committer) -> None:
        committer.submit([(unit, rows) for unit, rows in f.finished.items() if rows])
        f.finished.clear()
        f.since_checkpoint, f.last_checkpoint = 0, time.monotonic()

    # -- engine start --------------------------------------------------------------------------
    def _start_engine(self, spec: JobSpec) -> Engine:
        """The engine. A SIGTERM/SIGINT while it starts (minutes on a GPU: compilation, CUDA graphs) ends
        the process at once with exit 75: no row is in flight and no unit is claimed yet, so there is
        nothing to finish or commit. (Exiting from the handler is deliberate: vLLM waits for its engine
        core in a zmq poll that swallows exceptions raised by signal handlers.)"""
        def stop_now(signum: int, _frame: object) -> None:
            killed = kill_children()
            log.warning("%s while the engine was starting: stopped (%d engine processes ended, nothing was in "
                        "flight); rerun the same command to resume", signals.name(signum), killed)
            for handler in logging.getLogger().handlers + log.handlers:
                handler.flush()
            os._exit(EXIT_INTERRUPTED)

        with signals.handling(stop_now):
            self.lock.watch()  # the engine's processes die with this one, even by SIGKILL
            return self.opts.engine_factory(spec)

    # -- after ---------------------------------------------------------------------------------
    @staticmethod
    def _mark_complete_if_done(prep: Prepared, summary: Summary) -> bool:
        """Write the completion record once every unit of the whole job (all ranks) is committed."""
        everyone = Ledger(prep.store, prep.all_units)
        everyone.load()
        if not everyone.complete():
            return False
        foreign = foreign_rows_by_job(prep.store, set(everyone.units))  # parts of other jobs' plans (--force)
        record = completion_record(prep.manifest, prep.all_units, everyone.rows_by_job, foreign, summary.worker)
        prep.store.put(SUCCESS, json.dumps(record, indent=1).encode())
        return True


def _output_row(req: Request, c: Completion) -> OutputRow:
    row = OutputRow(id=req.id, row_index=req.row_index, seed=req.seed, texts=c.texts, finish_reasons=c.finish_reasons,
                    output_tokens=c.output_tokens, prompt_tokens=c.prompt_tokens, cached_tokens=c.cached_tokens,
                    error=c.error, passthrough=req.passthrough)
    finish_row(row, req, c)  # structured outputs, logprobs, scores (run.structured)
    return row


def _error_row(req: Request, error: str) -> OutputRow:
    return OutputRow(id=req.id, row_index=req.row_index, seed=req.seed, prompt_tokens=len(req.token_ids),
                     error=error, passthrough=req.passthrough)


__all__ = ["Runner", "RunOptions", "Prepared"]
