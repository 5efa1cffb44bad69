"""runtime.window: the in-flight bound, fixed or adapted to the rows finishing per engine step."""

from __future__ import annotations

from batchgen.run.window import DEFAULT_SLOTS, REFILL_STEPS, Window, slot_rows


def test_fixed_window_stays() -> None:
    w = Window(512, auto=False)
    for _ in range(50):
        w.observe(100)
    assert w.size == 512


def test_auto_reserve_follows_the_rows_finishing_per_step() -> None:
    long = Window(512, auto=True)  # S: 512 sequences of 128 tokens, ~4 finish per step
    for _ in range(200):
        long.observe(4)
    assert long.size == 512 + REFILL_STEPS * 4
    short = Window(512, auto=True)  # CH: completions of ~6 tokens, ~85 finish per step
    for _ in range(200):
        short.observe(85)
    assert short.size == 512 + REFILL_STEPS * 85
    burst = Window(512, auto=True)
    for _ in range(200):
        burst.observe(5000)
    assert burst.size == 1024  # at most twice the slots
    assert Window(512, auto=True).size == 512  # before the first step: the slots


def test_default_window_fills_the_sequence_slots_not_n_times_them() -> None:
    """A row of n completions takes n of max_num_seqs: the default window is max_num_seqs / n rows, rounded up."""
    assert slot_rows(1024, 1) == 1024 and slot_rows(1024, 4) == 256 and slot_rows(1000, 3) == 334
    assert slot_rows(2, 4) == 1 and slot_rows(None, 1) == DEFAULT_SLOTS and slot_rows(None, 2) == DEFAULT_SLOTS // 2
