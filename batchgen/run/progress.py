"""Progress: a tqdm bar on a terminal, plain periodic lines otherwise (cron, SLURM logs)."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import TextIO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from batchgen.job.spec import JobSpec
from batchgen.run.timeline import Timeline

# Loggers whose lines would cut through the bar: ours (they reach the root logger's handler) and vLLM's
# (its own handler, on stdout by default: the same terminal as the bar on stderr).
BAR_LOGGERS = ("", "vllm")


def _console_loggers() -> list[logging.Logger]:
    """Those of BAR_LOGGERS that write to the terminal themselves (tqdm then writes their lines above the bar)."""
    def console(h: logging.Handler) -> bool:
        return isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr)

    loggers = [logging.getLogger(name or None) for name in BAR_LOGGERS]
    return [lg for lg in loggers if any(console(h) for h in lg.handlers)]


class Progress:
    def __init__(self, mode: str, total: int, label: str, interval: float, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "lines"
        self.mode, self.total, self.label, self.interval = mode, total, label, interval
        self.t0 = self._last_line = time.monotonic()
        self.rows = self.out_tokens = self.errors = 0
        self.timeline = Timeline()
        self._bar = tqdm(total=total, desc=label, unit="row", file=self.stream, dynamic_ncols=True, smoothing=0.1) if mode == "bar" else None
        # While the bar is up, log lines are written above it (tqdm clears and redraws it), not into it.
        self._redirect = contextlib.ExitStack()
        if self._bar is not None and (loggers := _console_loggers()):
            self._redirect.enter_context(logging_redirect_tqdm(loggers))

    @classmethod
    def for_job(cls, spec: JobSpec, total: int) -> Progress:
        return cls(spec.runtime.progress, total, spec.name or "batchgen", spec.runtime.progress_seconds)

    def update(self, rows: int, out_tokens: int, errors: int, note: str = "") -> None:
        self.rows += rows
        self.out_tokens += out_tokens
        self.errors += errors
        self.timeline.note(self.rows)
        now = time.monotonic()
        if self._bar is not None:
            self._bar.update(rows)
            if rows:
                self._bar.set_postfix_str(f"{self.out_tokens / max(now - self.t0, 1e-9):,.0f} tok/s, {self.errors} err{note}", refresh=False)
        elif self.mode == "lines" and now - self._last_line >= self.interval:
            self._last_line = now
            self.line(note)

    def line(self, note: str = "") -> None:
        el = max(time.monotonic() - self.t0, 1e-9)
        rate = self.rows / el
        eta = (self.total - self.rows) / rate if rate > 0 else float("nan")
        print(f"[batchgen] {self.label}: {self.rows}/{self.total} rows, {rate:.1f} rows/s, "
              f"{self.out_tokens / el:,.0f} out tok/s, {self.errors} errors, eta {eta:,.0f}s{note}",
              file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._redirect.close()
        elif self.mode == "lines":
            self.line()
