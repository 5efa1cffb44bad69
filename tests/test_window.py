"""runtime.window: the in-flight bound, fixed or adapted to the rows finishing per engine step."""

from __future__ import annotations

from batchgen.run.window import REFILL_STEPS, Window


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
