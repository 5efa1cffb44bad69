"""runtime.window: the in-flight bound, fixed or adapted to the sequences finishing per engine step."""

from __future__ import annotations

import pyarrow.parquet as pq

from batchgen.engine.base import Request
from batchgen.engine.instant import InstantEngine
from batchgen.job.load import validate
from batchgen.job.spec import SamplingSpec
from batchgen.run.runner import RunOptions, Runner
from batchgen.run.window import DEFAULT_SLOTS, REFILL_STEPS, Window
from tests.conftest import job_dict, write_shards
from tests.inflight import PeakInFlight


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


def _row(n: int) -> Request:
    return Request(unit="u", row_index=0, id="r", seed=0, sampling=SamplingSpec(n=n, temperature=0.8))


def test_default_window_counts_each_rows_sequences() -> None:
    """A row of n completions takes n of max_num_seqs (vLLM runs each as a sequence); a number counts rows."""
    default = Window.for_engine(1024, None)
    assert (default.size, default.auto, default.cost(_row(4)), default.cost(_row(1))) == (1024, False, 4, 1)
    assert Window.for_engine(None, None).size == DEFAULT_SLOTS
    auto = Window.for_engine(512, "auto")
    assert (auto.size, auto.auto, auto.cost(_row(3))) == (512, True, 3)
    rows = Window.for_engine(1024, 256)
    assert (rows.size, rows.auto, rows.cost(_row(4))) == (256, False, 1)


def test_per_row_n_fills_the_slots_with_sequences_not_rows(tiny_model, tmp_path) -> None:
    """A per-row `n` column of 1-4: the default window holds max_num_seqs sequences, each row counting its own n
    (until session 11 it used the job's n for every row: 16 rows of up to 64 sequences), at most one row's n - 1
    above (a row is never held back for want of room); every id once with its own number of completions."""
    ids = write_shards(tmp_path / "in", shards=2, rows=60, row_group=20, k=lambda s, i: 1 + (i + s) % 4)
    spec = validate(job_dict(tiny_model, tmp_path / "in", tmp_path / "out", sampling={"temperature": 0.8, "per_row": {"n": "k"}},
                             runtime={"engine": "instant", "progress": "off"}))
    engine = PeakInFlight(InstantEngine(spec, max_num_seqs=16))
    summary = Runner(spec, RunOptions(engine_factory=lambda _s: engine)).run()
    assert summary.complete and summary.counters.rows == len(ids) and summary.counters.errors == 0
    assert 16 <= engine.peak_seqs <= 16 + 3 and engine.peak_rows < 16, (engine.peak_seqs, engine.peak_rows)
    rows = pq.read_table(tmp_path / "out" / "parts", columns=["id", "completions"]).to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(ids)
    wanted = {f"s{s}-{i:05d}": 1 + (i + s) % 4 for s in range(2) for i in range(60)}
    assert all(len(r["completions"]) == wanted[r["id"]] for r in rows)
