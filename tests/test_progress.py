"""The progress bar on a terminal: log lines (ours, and vLLM's on stdout) are written above it, never into it."""

from __future__ import annotations

import io
import logging
import sys

from batchgen.run.progress import Progress


class Terminal(io.StringIO):
    """stdout and stderr of one terminal, as a test can read it back."""

    def isatty(self) -> bool:
        return True


def screen(text: str) -> list[str]:
    """The lines a terminal shows: a carriage return goes back to column 0 and what follows overwrites."""
    lines = []
    for raw in text.split("\n"):
        cells: list[str] = []
        for segment in raw.split("\r"):
            cells[:len(segment)] = segment
        lines.append("".join(cells).rstrip())
    return lines


def test_log_lines_mid_bar_do_not_break_it(monkeypatch):
    tty = Terminal()
    monkeypatch.setattr(sys, "stderr", tty)
    monkeypatch.setattr(sys, "stdout", tty)
    ours = logging.StreamHandler(sys.stderr)
    ours.setFormatter(logging.Formatter("[%(name)s] %(levelname)s %(message)s"))
    theirs = logging.StreamHandler(sys.stdout)  # as vLLM's own handler: stdout, not propagating
    vllm = logging.getLogger("vllm")
    monkeypatch.setattr(logging.getLogger(), "handlers", [ours])
    monkeypatch.setattr(vllm, "handlers", [theirs])
    monkeypatch.setattr(vllm, "propagate", False)
    monkeypatch.setattr(vllm, "level", logging.WARNING)

    bar = Progress("auto", total=10, label="job", interval=30)
    assert bar.mode == "bar"
    bar.update(3, 30, 0)
    logging.getLogger("batchgen").warning("uploads behind: 4 parts queued")
    vllm.warning("a warning from vLLM")
    bar.update(2, 20, 0)
    bar.close()
    assert logging.getLogger().handlers == [ours] and vllm.handlers == [theirs], "handlers restored after the bar"

    shown = screen(tty.getvalue())
    assert "[batchgen] WARNING uploads behind: 4 parts queued" in shown
    assert "a warning from vLLM" in shown
    bars = [line for line in shown if line.startswith("job:")]
    assert bars and "5/10" in bars[-1]
    assert not any("|" in line and ("uploads behind" in line or "vLLM" in line) for line in shown), shown
    logging.getLogger("batchgen").warning("after the bar")
    assert screen(tty.getvalue())[-2] == "[batchgen] WARNING after the bar"


def test_without_the_redirect_the_line_lands_in_the_bar(monkeypatch):
    """The check above can fail: a plain handler writes right after the bar, on its line."""
    tty = Terminal()
    monkeypatch.setattr(sys, "stderr", tty)
    bar = Progress("bar", total=10, label="job", interval=30, stream=tty)
    bar.update(3, 30, 0)
    handler = logging.StreamHandler(tty)  # added after the bar started: not redirected
    logger = logging.getLogger("batchgen.test-plain")
    monkeypatch.setattr(logger, "handlers", [handler])
    monkeypatch.setattr(logger, "propagate", False)
    logger.warning("into the bar")
    bar.close()
    assert any(line.startswith("job:") and line.endswith("into the bar") for line in screen(tty.getvalue()))
