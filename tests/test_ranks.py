"""Static scale-out: rank and world size from schedulers' variables, and a deterministic split."""

from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

from batchgen.cli import app
from batchgen.errors import SpecError
from batchgen.job.load import validate
from batchgen.io.shards import Unit
from batchgen.work.ranks import assign, rank_from_environment
from tests.outputs import planned_units
from tests.conftest import job_dict, write_job, write_shards


@pytest.mark.parametrize("env, expected", [
    ({}, (0, 1, "single process")),
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "0"}, (3, 8, "SLURM array")),
    ({"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "10"}, (2, 4, "SLURM array")),
    ({"SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "0",
      "SLURM_ARRAY_TASK_STEP": "4"}, (2, 4, "SLURM array")),
    # An array task is also a one-task step: the array wins.
    ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, (1, 2, "SLURM array")),
    ({"SLURM_PROCID": "5", "SLURM_NTASKS": "16"}, (5, 16, "SLURM tasks")),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, (0, 1, "single process")),  # a plain sbatch job
    ({"JOB_COMPLETION_INDEX": "7", "BATCHGEN_WORLD_SIZE": "10"}, (7, 10, "Kubernetes Indexed Job")),
])
def test_rank_from_environment(env, expected):
    assert rank_from_environment(env) == expected


@pytest.mark.parametrize("env, message", [
    ({"JOB_COMPLETION_INDEX": "2"}, "BATCHGEN_WORLD_SIZE"),
    ({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "0"}, "--array=0-7"),
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "0",
      "SLURM_ARRAY_TASK_STEP": "2"}, "evenly spaced"),
])
def test_rank_from_environment_refuses_what_it_cannot_map(env, message):
    with pytest.raises(SpecError) as e:
        rank_from_environment(env)
    assert message in e.value.render()


def _units(n: int) -> list[Unit]:
    return [Unit(key=f"shard-{i // 3}@{(i % 3) * 100}", shard=f"shard-{i // 3}", row_start=(i % 3) * 100,
                 row_end=(i % 3) * 100 + 100, row_groups=(i % 3,)) for i in range(n)]


@pytest.mark.parametrize("world", [1, 2, 3, 8, 40])
def test_assign_is_a_deterministic_partition(world):
    units = _units(31)
    shares = [assign(units, r, world) for r in range(world)]
    shuffled = units[:]
    random.Random(world).shuffle(shuffled)
    # Order of discovery does not matter: every worker computes the same split on its own.
    assert shares == [assign(shuffled, r, world) for r in range(world)]
    keys = [u.key for share in shares for u in share]
    assert sorted(keys) == sorted(u.key for u in units) and len(set(keys)) == len(keys)
    sizes = [len(s) for s in shares]
    assert max(sizes) - min(sizes) <= 1


def test_assign_refuses_a_rank_outside_the_world():
    with pytest.raises(SpecError, match="outside"):
        assign(_units(3), 2, 2)


def test_plan_prints_who_does_what(tiny_model, tmp_path):
    write_shards(tmp_path / "in", shards=3, rows=40, row_group=10)
    job = write_job(tmp_path / "job.yaml", job_dict(tiny_model, tmp_path / "in", tmp_path / "out", input={"unit_rows": 20}))
    spec = validate(job_dict(tiny_model, tmp_path / "in", tmp_path / "out", input={"unit_rows": 20}))
    units = planned_units(spec)
    assert len(units) == 6

    text = CliRunner().invoke(app, ["plan", str(job), "--world-size", "8"])
    assert text.exit_code == 0, text.output
    assert "6 work units, 120 rows, 8 worker(s)" in text.output
    for r in range(8):
        assert f"rank {r}: " in text.output
    as_json = CliRunner().invoke(app, ["plan", str(job), "--world-size", "8", "--json"])
    shares = json.loads(as_json.output)
    assert [len(shares[str(r)]) for r in range(8)] == [1] * 6 + [0] * 2
    assert [shares[str(r)][0]["unit"] for r in range(6)] == [u.key for u in sorted(units)]
    # The same command twice, the same answer.
    assert CliRunner().invoke(app, ["plan", str(job), "--world-size", "8", "--json"]).output == as_json.output
