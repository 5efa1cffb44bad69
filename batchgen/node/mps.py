"""CUDA MPS for engines that share a GPU (`runtime.mps`).

Without MPS, processes on one GPU take turns: the GPU runs one context's kernels at a time, so a
second engine only fills the gaps the first leaves between kernels. Under NVIDIA's Multi-Process
Service their kernels run side by side. The supervisor starts a private control daemon
(`nvidia-cuda-mps-control -f`, its pipe and log folder in a temporary folder; `quit` after the engines,
SIGTERM if the supervisor dies) and hands its pipe folder to the engines, whose CUDA contexts then go
through it.
A daemon the user already runs (CUDA_MPS_PIPE_DIRECTORY set) is used as it is.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Mapping

from batchgen.errors import SpecError
from batchgen.run.signals import die_with_parent

log = logging.getLogger("batchgen")

CONTROL = "nvidia-cuda-mps-control"
READY_SECONDS = 10.0  # for the daemon's control pipe to appear
PIPE_ENV, LOG_ENV = "CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY"


@dataclass
class MpsDaemon:
    """A control daemon batchgen started, and how its clients find it."""

    control: str
    folder: Path
    proc: subprocess.Popen
    env: dict[str, str]

    @property
    def pipe_dir(self) -> Path:
        return self.folder / "pipe"

    def client_env(self, env: Mapping[str, str]) -> dict[str, str]:
        return {**env, **_folders_env(self.folder)}

    def ask(self, command: str, timeout: float = 10.0) -> str:
        """One command to the daemon (`get_server_list`, `quit`, ...); its answer."""
        done = subprocess.run([self.control], input=command + "\n", capture_output=True, text=True,
                              env=self.env, timeout=timeout)
        return done.stdout.strip()

    def servers(self) -> list[str]:
        """PIDs of the MPS servers clients started: empty if no engine went through MPS."""
        try:
            return [s for s in self.ask("get_server_list").split() if s.isdigit()]
        except (OSError, subprocess.SubprocessError):
            return []

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask("quit")
                self.proc.wait(timeout=15)
            except (OSError, subprocess.SubprocessError):
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def _folders_env(folder: Path) -> dict[str, str]:
    """Where the daemon and its clients meet (the pipe) and where the daemon and its server log."""
    return {PIPE_ENV: str(folder / "pipe"), LOG_ENV: str(folder / "log")}


def mps_available(mode: Literal["auto", "on", "off"], env: Mapping[str, str],
                  which: Callable[[str], str | None] = shutil.which) -> bool:
    """Whether engines sharing a GPU would run under MPS: a user's daemon, or the control program to start one."""
    return mode != "off" and bool(env.get(PIPE_ENV) or which(CONTROL))


def start_mps(mode: Literal["auto", "on", "off"], engines_per_gpu: int, on_gpus: bool, env: Mapping[str, str],
              which: Callable[[str], str | None] = shutil.which) -> MpsDaemon | None:
    """Start a private MPS control daemon when engines share GPUs and `mode` asks for it.

    auto: when the control program is on PATH (else engines take turns, as without MPS); on: it must be,
    and the daemon must start, or the job fails here, before any engine starts; off: never."""
    if mode == "off" or engines_per_gpu <= 1 or not on_gpus:
        return None
    if env.get(PIPE_ENV):
        log.info("MPS: using the daemon of %s=%s", PIPE_ENV, env[PIPE_ENV])
        return None
    control = which(CONTROL)
    if control is None:
        if mode == "on":
            raise SpecError(f"{CONTROL} is not on PATH", where="runtime.mps",
                            fix="install the NVIDIA driver's utilities (they hold MPS), or set runtime.mps: auto or off")
        log.info("MPS: %s not found; the %d engines per GPU take turns on it", CONTROL, engines_per_gpu)
        return None
    folder = Path(tempfile.mkdtemp(prefix="batchgen-mps-"))
    (folder / "pipe").mkdir()
    (folder / "log").mkdir()
    daemon_env = {**env, **_folders_env(folder)}
    proc = subprocess.Popen([control, "-f"], env=daemon_env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
    daemon = MpsDaemon(control, folder, proc, daemon_env)
    ready = daemon.pipe_dir / "control"
    deadline = time.monotonic() + READY_SECONDS
    while proc.poll() is None and not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is None and ready.exists():
        log.info("MPS: control daemon pid %d (%s); the engines' kernels share each GPU", proc.pid, folder)
        return daemon
    why = f"exit {proc.returncode}" if proc.poll() is not None else f"no control pipe after {READY_SECONDS:.0f} s"
    logs = " ".join((p.read_text(errors="replace")[-300:] for p in (folder / "log").glob("*.log")))
    daemon.stop()
    if mode == "on":
        raise SpecError(f"the MPS control daemon did not start ({why}) {logs}".strip(), where="runtime.mps",
                        fix="check that no other user runs MPS on these GPUs and their compute mode allows it, or set runtime.mps: auto or off")
    log.warning("MPS: the control daemon did not start (%s); the engines take turns on each GPU", why)
    return None
