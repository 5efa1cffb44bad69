"""How many requests the runner keeps in the engine (`runtime.window`).

By default enough rows to fill the engine's slots (max_num_seqs sequences): a row of n completions takes
n of them (vLLM runs each completion as its own sequence), so max_num_seqs / n rows (`slot_rows`). Until
session 10 of docs/benchmarks.md the window counted a row as one slot: with n=4 an engine held four times
the rows it could run, queued inside vLLM where another engine of the node cannot take them, and a small
job's engines ended apart. vLLM's engine core runs its next step while the runner
is still reading the last one's results, so a slot freed in step N gets its new request one or two steps
later (two with asynchronous scheduling). When completions are long (S: 128 tokens) that costs about
1%. When they are a few tokens (CH: <= 8), a sixth of the batch finishes at every step and slots stay
empty often. LLM.generate queues every prompt at once and never waits for a refill.

`window: auto` keeps a reserve queued inside vLLM: max_num_seqs plus REFILL_STEPS steps' worth of the
rows finishing per step (a running mean), at most twice max_num_seqs. Long completions get a small
reserve, short ones a large one.
"""

from __future__ import annotations

import math

DEFAULT_SLOTS = 64  # an engine that does not say its max_num_seqs
REFILL_STEPS = 2  # steps between a slot freeing and its new request being scheduled (async scheduling)
SMOOTHING = 0.1  # weight of the newest step in the running mean of rows finished per step


def slot_rows(max_num_seqs: int | None, n: int) -> int:
    """Rows whose n completions each fill the engine's max_num_seqs sequence slots (at least one row)."""
    return max(1, -(-(max_num_seqs or DEFAULT_SLOTS) // max(1, n)))


class Window:
    """The in-flight bound; `auto` adapts it to the rows finishing per engine step."""

    def __init__(self, slots: int, auto: bool):
        self.slots, self.auto = slots, auto
        self.finished_per_step = 0.0
        self.size = slots

    def observe(self, finished: int) -> None:
        """After each engine step that returned: how many rows it finished."""
        if not self.auto:
            return
        self.finished_per_step += SMOOTHING * (finished - self.finished_per_step)
        self.size = self.slots + min(self.slots, math.ceil(REFILL_STEPS * self.finished_per_step))
