"""Kill -9 and resume exactly once for a job whose rows pick LoRA adapters (real processes, real engine)."""

from __future__ import annotations

import signal

import pytest

from tests.conftest import job_dict, write_job, write_shards
from tests.lora_adapters import write_adapter
from tests.test_resume import Run, assert_no_duplicates, committed, n_parts, resume_to_the_end

pytestmark = pytest.mark.engine


def test_per_row_lora_job_killed_and_resumed_exactly_once(tiny_model, tmp_path):
    names = ["a", "b", None]
    ids = write_shards(tmp_path / "in", shards=2, rows=60, row_group=20, adapter=lambda s, i: names[(i + s) % 3])
    adapters = {name: str(write_adapter(tmp_path / "adapters" / name, seed)) for name, seed in (("a", 1), ("b", 2))}
    out = tmp_path / "out"
    base = job_dict(tiny_model, tmp_path / "in", out, sampling={"temperature": 0, "max_tokens": 32, "per_row": {"lora": "adapter"}},
                    runtime={"window": 4, "progress": "lines", "progress_seconds": 0.2})
    base["model"].update(lora=adapters, dtype="float32")  # float32: batch composition must not flip greedy ties
    job = tmp_path / "job.yaml"

    write_job(job, {**base, "output": {"path": str(tmp_path / "ref")}})
    run = Run(job)
    assert run.proc.wait(timeout=300) == 0, "".join(run.lines[-30:])
    reference = {r["id"]: r["text"] for r in committed(tmp_path / "ref")}
    assert sorted(reference) == sorted(ids) and all(reference.values())

    # SIGKILL mid-part: after a commit, with more rows finished than committed.
    write_job(job, {**base, "checkpoint": {"every_rows": 20}})
    run = Run(job)
    run.wait_until(lambda: n_parts(out) >= 1)
    run.wait_until(lambda: run.rows_done() >= len(committed(out)) + 5)
    assert run.kill(signal.SIGKILL) == -signal.SIGKILL
    before = len(assert_no_duplicates(out))
    assert 0 < before < len(ids)

    resume_to_the_end(job, out, ids, reference)
