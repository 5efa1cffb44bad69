"""Every GPU of a node: one engine process per GPU group, supervised as one worker.

`batchgen run` becomes this supervisor when the node has room for more than one engine
(`runtime.num_engines`, default: visible GPUs / GPUs per engine). Each engine is a plain
`batchgen run` child pinned with CUDA_VISIBLE_DEVICES; the engines take this rank's units one at a
time under leases (batchgen.work.claim), so a slow engine holds one unit, not a fixed half of the node.
The supervisor forwards SIGTERM/SIGINT to them, releases the leases of an engine that dies, shows
one progress view and prints one summary. Exit code: 75 if the run was interrupted, else 0 once
this rank's share is committed (whoever commits the job's last unit writes `_SUCCESS.json`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Mapping, Sequence

from batchgen.errors import EXIT_FAILED, EXIT_INTERRUPTED, SpecError
from batchgen.io.layout import SUCCESS, summary_path
from batchgen.io.store import Store
from batchgen.job.load import FLAG_PATHS
from batchgen.job.spec import JobSpec, ModelSpec, RuntimeSpec
from batchgen.node.affinity import plan_affinity
from batchgen.node.mps import MpsDaemon, start_mps
from batchgen.node.gpus import gpu_memory_bytes
from batchgen.node.sharing import SharedStart, StartGates, plan_shared_start, resolve_engines_per_gpu, share_env, share_overrides
from batchgen.node.view import NodeProgress, engine_line, node_summary, read_summary
from batchgen.run import signals
from batchgen.run.prepare import Prepared
from batchgen.run.progress import Progress
from batchgen.run.runner import RunOptions, Runner
from batchgen.run.stats import Summary
from batchgen.work.lease import LeaseBook

log = logging.getLogger("batchgen")


@dataclass(frozen=True)
class EngineLayout:
    """How many engine processes, and the GPUs each one sees (empty tuples: CPU engines). Engines
    i*k .. i*k+k-1 share the i-th GPU group (k = engines_per_gpu)."""

    num_engines: int
    gpus_per_engine: int
    groups: tuple[tuple[str, ...], ...]
    engines_per_gpu: int = 1


def engine_layout(runtime: RuntimeSpec, model: ModelSpec, gpus: Sequence[str], mps: bool = False) -> EngineLayout:
    """Split the visible GPUs into engine groups. `gpus` are CUDA_VISIBLE_DEVICES entries (ids or UUIDs);
    `mps`: engines sharing a GPU would run under MPS (what `engines_per_gpu: auto` needs to share one)."""
    per = runtime.gpus_per_engine or model.tensor_parallel_size * int(model.engine_kwargs.get("pipeline_parallel_size", 1))
    k = resolve_engines_per_gpu(runtime, model, on_gpu=bool(gpus), mps=mps)
    if not gpus:
        n = runtime.num_engines or k
        return EngineLayout(n, per, tuple(() for _ in range(n)), min(k, n))
    n = runtime.num_engines or max(1, len(gpus) // per) * k
    used = -(-n // k)  # GPU groups in use
    if n > 1 and used * per > len(gpus):
        shared = f", {k} per GPU group," if k > 1 else ""
        raise SpecError(f"{n} engines{shared} x {per} GPUs each need {used * per} GPUs, but {len(gpus)} are visible ({','.join(gpus)})",
                        where="runtime.num_engines",
                        fix=f"set runtime.num_engines to at most {max(1, len(gpus) // per) * k}, or make more GPUs visible")
    return EngineLayout(n, per, tuple(tuple(gpus[(i // k) * per:(i // k + 1) * per]) for i in range(n)), min(k, n))


@dataclass
class NodeRun:
    """What the CLI resolved: the job file, its overrides, who this node is, and its environment."""

    job: Path
    flags: dict[str, object]  # named CLI flags (see jobfile.FLAG_PATHS)
    sets: list[str]
    rank: int
    world_size: int
    worker: str
    env: Mapping[str, str]
    force: bool = False
    verbose: bool = False
    python: str = field(default_factory=lambda: sys.executable)
    state_dir: Path | None = None  # worker locks and engine process records (run.worklock), passed to the engines


@dataclass
class NodeResult:
    exit_code: int
    summary: Summary
    engine_lines: list[str]

    def lines(self) -> list[str]:
        """What the CLI prints: the node summary, or what failed, then a line per engine."""
        head = self.summary.lines() if self.exit_code in (0, EXIT_INTERRUPTED) else \
            [f"batchgen: engines failed (exit {self.exit_code}); rerun the same command to resume. Their output is above."]
        return head + self.engine_lines


def engine_worker(worker: str, index: int) -> str:
    return f"{worker}-e{index}"


def child_command(run: NodeRun, spec: JobSpec, index: int) -> list[str]:
    """`batchgen run` for engine `index`: the same job and overrides, one engine, progress left to us."""
    cmd = [run.python, "-m", "batchgen", "run", str(run.job)]
    for flag, value in run.flags.items():
        cmd += ["--set", f"{FLAG_PATHS[flag]}={json.dumps(value)}"]  # JSON is YAML: values keep their type
    for item in run.sets:
        cmd += ["--set", item]
    cmd += ["--set", "runtime.num_engines=1", "--set", 'runtime.progress="off"']
    if spec.runtime.metrics_textfile:  # one file per engine; the textfile collector reads them all
        stem = spec.runtime.metrics_textfile.removesuffix(".prom")
        cmd += ["--set", f"runtime.metrics_textfile={json.dumps(f'{stem}-e{index}.prom')}"]
    cmd += ["--rank", str(run.rank), "--world-size", str(run.world_size),
            "--worker-id", engine_worker(run.worker, index), "--engine-of-node", str(index)]
    cmd += ["--state-dir", str(run.state_dir)] if run.state_dir else []
    return cmd + (["--force"] if run.force else []) + (["--verbose"] if run.verbose else [])


def engine_env(base: Mapping[str, str], gpus: Sequence[str], cores: Sequence[int]) -> dict[str, str]:
    """An engine's environment: pinned to its GPUs, or (CPU engines) its OpenMP threads to its cores
    unless the user chose (vLLM's CPU backend binds one thread per core; left to itself, every engine
    binds every core, and their threads spinning on the same cores slow each other several-fold)."""
    env = dict(base)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    elif cores and "VLLM_CPU_OMP_THREADS_BIND" not in env:
        env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in cores)
    return env


def pin_to(cores: Sequence[int]) -> Callable[[], None]:
    """A Popen preexec_fn: the child, and every process it starts, runs on `cores` only."""
    def pin() -> None:
        os.sched_setaffinity(0, cores)
    return pin


class Supervisor:
    def __init__(self, spec: JobSpec, run: NodeRun, layout: EngineLayout, prep: Prepared, mps: MpsDaemon | None = None):
        self.spec, self.run, self.layout, self.prep, self.mps = spec, run, layout, prep, mps
        self.mps_servers: list[str] = []
        self.workers = [engine_worker(run.worker, i) for i in range(layout.num_engines)]
        self.procs: list[subprocess.Popen] = []
        self.codes: dict[int, int] = {}
        self.signalled_at: float | None = None
        self._threads: list[threading.Thread] = []
        self.shared_start = shared_start_of(spec, layout)
        self.gates = StartGates(layout.num_engines, 1 if self.shared_start.together else layout.engines_per_gpu)

    # -- engines ---------------------------------------------------------------------------------
    def start(self) -> None:
        for worker in self.workers:  # a summary left by an earlier run must not pass for this one's
            self.prep.store.delete(summary_path(worker))
        pinned = self.spec.runtime.cpu_affinity == "auto"
        cores = plan_affinity(sorted(os.sched_getaffinity(0)), self.layout.groups) if pinned \
            else [[] for _ in self.layout.groups]
        k = self.layout.engines_per_gpu
        if k > 1:
            log.info("%d engines per %s start %s: %s", k, "GPU" if any(self.layout.groups) else "CPU device",
                     "together" if self.shared_start.together else "one after another", self.shared_start.why)
        kv = self.shared_start.kv_cache_memory_bytes
        for i, gpus in enumerate(self.layout.groups):
            env = share_env(engine_env(self.mps.client_env(self.run.env) if self.mps else self.run.env, gpus, cores[i]), k)
            cmd = child_command(self.run, self.spec, i) + share_overrides(self.spec.model, k, kv) + self.gates.args(i)
            # A session of its own: a terminal's Ctrl-C reaches the supervisor only, which forwards it once.
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=pin_to(cores[i]) if gpus and cores[i] else None)
            self.procs.append(proc)
            log.info("engine e%d: pid %d, %s", i, proc.pid, f"GPUs {','.join(gpus)}" if gpus else "CPU")
        for i, proc in enumerate(self.procs):
            t = threading.Thread(target=_relay, args=(proc.stdout, f"[e{i}] ", sys.stderr), daemon=True)
            t.start()
            self._threads.append(t)

    def forward(self, signum: int, _frame: object = None) -> None:
        now = time.monotonic()
        if self.signalled_at is not None and now - self.signalled_at < signals.SAME_NOTICE_SECONDS:
            return  # the scheduler delivered this one to the engines too
        self.signalled_at = self.signalled_at or now
        live = [p for i, p in enumerate(self.procs) if i not in self.codes and p.poll() is None]
        log.warning("%s: forwarding to %d engines", signals.name(signum), len(live))
        for proc in live:
            try:
                proc.send_signal(signum)
            except ProcessLookupError:
                pass

    def wait(self) -> None:
        """Until every engine exits; progress meanwhile; an engine that fails gives its units back."""
        progress = NodeProgress(self.prep.store, self.workers, Progress.for_job(self.spec, self.prep.ledger.remaining()))
        every = min(self.spec.runtime.progress_seconds, 2.0)
        last = time.monotonic()
        while len(self.codes) < len(self.procs):
            time.sleep(0.2)
            for i, proc in enumerate(self.procs):
                if i not in self.codes and proc.poll() is not None:
                    self.codes[i] = proc.returncode
                    self._exited(i, proc.returncode)
            self.gates.open_due(lambda i: i in self.codes)
            if time.monotonic() - last >= every:
                last = time.monotonic()
                progress.refresh()
                self.look_for_mps_server()
        for t in self._threads:
            t.join(timeout=5)
        progress.close()

    def look_for_mps_server(self) -> None:
        """Until one is seen: the MPS server that appears once an engine went through the daemon."""
        if self.mps and not self.mps_servers:
            self.mps_servers = self.mps.servers()
            if self.mps_servers:
                log.info("MPS: server pid %s serves the engines", ",".join(self.mps_servers))

    def _exited(self, index: int, code: int) -> None:
        if code == 0 or self.signalled_at is not None:
            return
        why = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
        log.error("engine e%d failed (%s); the other engines take over its units", index, why)
        book = LeaseBook(self.prep.store, self.run.worker, self.spec.runtime.lease_seconds)
        released = book.release_owner(self.workers[index])
        if released:
            log.info("released the leases of e%d: %s", index, ", ".join(released))

    # -- the end ---------------------------------------------------------------------------------
    def result(self, base: Summary) -> NodeResult:
        summaries = {i: read_summary(self.prep.store, w) for i, w in enumerate(self.workers)}
        summary = node_summary(base, [s for s in summaries.values() if s is not None], self.layout.num_engines)
        if summary.engine_options:
            summary.engine_options["engines_per_gpu"] = self.layout.engines_per_gpu
            summary.engine_options["mps"] = bool(self.mps_servers)
            if self.layout.engines_per_gpu > 1:
                summary.engine_options["shared_start"] = "together" if self.shared_start.together else "one_by_one"
                if self.shared_start.kv_cache_memory_bytes:  # derived by batchgen, not the job's own
                    summary.engine_options["shared_kv_derived"] = True
        lines = [engine_line(i, w, self.codes.get(i), summaries[i]) for i, w in enumerate(self.workers)]
        self.prep.ledger.load()
        share_done = self.prep.ledger.complete()
        failed = [c for c in self.codes.values() if c not in (0, EXIT_INTERRUPTED)]
        if share_done:
            code = 0  # even if an engine failed: the others finished its units
        elif self.signalled_at is not None or EXIT_INTERRUPTED in self.codes.values():
            code = EXIT_INTERRUPTED
        elif failed:
            code = failed[0] if failed[0] > 0 else EXIT_FAILED
        else:
            log.error("every engine exited 0 but %d rows of this share are not committed", self.prep.ledger.remaining())
            code = EXIT_FAILED
        summary.interrupted = code == EXIT_INTERRUPTED
        return NodeResult(code, summary, lines)


def shared_start_of(spec: JobSpec, layout: EngineLayout) -> SharedStart:
    """How the engines sharing each GPU group start; the smallest GPU in use sizes every engine's KV cache."""
    first = [group[0] for group in layout.groups if group]
    sizes = [gpu_memory_bytes(g) for g in dict.fromkeys(first)] if layout.engines_per_gpu > 1 else []
    device_bytes = None if not sizes or None in sizes else min(sizes)
    return plan_shared_start(spec.runtime, spec.model, layout.engines_per_gpu, device_bytes, on_gpu=bool(first))


def run_node(spec: JobSpec, run: NodeRun, layout: EngineLayout) -> NodeResult:
    """Check the job once, start the engines, wait for them; raises BatchgenError for a bad job."""
    t0 = time.monotonic()
    runner = Runner(spec, RunOptions(rank=run.rank, world_size=run.world_size, worker=run.worker, force=run.force,
                                     state_dir=run.state_dir))
    prep = runner.prepare()  # a bad job fails here, once, before any engine starts
    if prep.ledger.remaining() == 0:
        return NodeResult(0, runner.run(prep), [])
    base = Summary.begin(spec, run.worker, prep.units, prep.skipped)
    mps = start_mps(spec.runtime.mps, layout.engines_per_gpu, any(layout.groups), run.env)
    sup = Supervisor(spec, run, layout, prep, mps)
    try:
        with signals.handling(sup.forward):
            sup.start()
            sup.wait()
    finally:
        for proc in sup.procs:  # only after an error in the supervisor itself
            if proc.poll() is None:
                proc.terminate()
        sup.gates.close()
        if mps:
            sup.look_for_mps_server()  # a short run may end before the first look
            mps.stop()
    result = sup.result(base)
    result.summary.wall_seconds = time.monotonic() - t0
    result.summary.complete = _exists(prep.store, SUCCESS)
    prep.store.put(summary_path(run.worker), json.dumps(result.summary.as_dict(), indent=1).encode())
    return result


def _exists(store: Store, rel: str) -> bool:
    try:  # a read, not a listing: listings may be cached
        store.read_bytes(rel)
    except FileNotFoundError:
        return False
    return True


def _relay(stream: IO[bytes], prefix: str, out: IO[str]) -> None:
    """Copy an engine's output to ours, each line tagged with the engine."""
    for raw in iter(stream.readline, b""):
        out.write(prefix + raw.decode(errors="replace"))
        out.flush()
