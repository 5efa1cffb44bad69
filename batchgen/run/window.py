"""How many requests the runner keeps in the engine (`runtime.window`).

By default enough rows to fill the engine's slots (max_num_seqs sequences): a row of n completions takes
n of them (vLLM runs each completion as its own sequence), so the window counts sequences, each row its own
n (a per-row `n` column included): max_num_seqs / n rows when every row has the same n. Until
session 10 of docs/benchmarks.md the window counted a row as one slot: with n=4 an engine held four times
the rows it could run, queued inside vLLM where another engine of the node cannot take them, and a small
job's engines ended apart. vLLM's engine core runs its next step while the runner
is still reading the last one's results, so a slot freed in step N gets its new request one or two steps
later (two with asynchronous scheduling). When completions are long (S: 128 tokens) that costs about
1%. When they are a few tokens (CH: <= 8), a sixth of the batch finishes at every step and slots stay
empty often. LLM.generate queues every prompt at once and never waits for a refill.

`window: auto` keeps a reserve queued inside vLLM: max_num_seqs plus REFILL_STEPS steps' worth of the
sequences finishing per step (a running mean), at most twice max_num_seqs. Long completions get a small
reserve, short ones a large one. A number (`window: 256`) counts rows, whatever their n.
"""

from __future__ import annotations

import math

from batchgen.engine.base import Request

DEFAULT_SLOTS = 64  # an engine that does not say its max_num_seqs
REFILL_STEPS = 2  # steps between a slot freeing and its new request being scheduled (async scheduling)
SMOOTHING = 0.1  # weight of the newest step in the running mean of sequences finished per step


class Window:
    """The in-flight bound, in sequences (the default and `auto`) or in rows (a number); `auto` adapts it to
    the sequences finishing per engine step. The runner adds rows while the `cost` of its in-flight rows is below
    `size`, so the last one added may pass it by up to its n - 1: a row is never held back for want of room."""

    def __init__(self, slots: int, auto: bool = False, sequences: bool = True):
        self.slots, self.auto, self.sequences = slots, auto, sequences
        self.finished_per_step = 0.0
        self.size = slots

    @classmethod
    def for_engine(cls, max_num_seqs: int | None, given: int | str | None) -> Window:
        """`runtime.window` for an engine of max_num_seqs slots: None (fill them), "auto" or a row count."""
        if isinstance(given, int):
            return cls(given, sequences=False)
        return cls(max_num_seqs or DEFAULT_SLOTS, auto=given == "auto")

    def cost(self, req: Request) -> int:
        """What one row takes of the window: its n sequences, or 1 where the window counts rows."""
        return max(1, req.sampling.n) if self.sequences else 1

    def observe(self, finished: int) -> None:
        """After each engine step that returned: the cost of the rows it finished."""
        if not self.auto:
            return
        self.finished_per_step += SMOOTHING * (finished - self.finished_per_step)
        self.size = self.slots + min(self.slots, math.ceil(REFILL_STEPS * self.finished_per_step))
