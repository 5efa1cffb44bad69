"""Who does which units without a coordinator: a static rank split, and ranks from schedulers' variables."""

from __future__ import annotations

from typing import Mapping, Sequence

from batchgen.errors import SpecError
from batchgen.io.shards import Unit


def assign(units: Sequence[Unit], rank: int, world_size: int) -> list[Unit]:
    """This rank's share: sorted(units)[rank::world_size], deterministic with no coordinator."""
    if not 0 <= rank < world_size:
        raise SpecError(f"rank {rank} is outside 0..{world_size - 1}", fix="pass --rank in [0, --world-size)")
    return sorted(units)[rank::world_size]


def rank_from_environment(env: Mapping[str, str]) -> tuple[int, int, str]:
    """(rank, world_size, source) from a scheduler's variables: SLURM arrays or tasks, k8s Indexed Jobs."""
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        first, step = int(env.get("SLURM_ARRAY_TASK_MIN", "0")), max(1, int(env.get("SLURM_ARRAY_TASK_STEP", "1")))
        offset, count = int(env["SLURM_ARRAY_TASK_ID"]) - first, int(env["SLURM_ARRAY_TASK_COUNT"])
        if offset % step or not 0 <= offset // step < count:
            # e.g. --array=0,2,7: task ids that are not a range cannot be turned into ranks.
            raise SpecError(f"SLURM array task {env['SLURM_ARRAY_TASK_ID']} is not one of {count} evenly spaced tasks "
                            f"from {first} (step {step})", fix="submit a range such as --array=0-7 (a %limit is fine), "
                            "or pass --rank/--world-size")
        return offset // step, count, "SLURM array"
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), "SLURM tasks"
    if "JOB_COMPLETION_INDEX" in env:
        world = env.get("BATCHGEN_WORLD_SIZE") or env.get("JOB_COMPLETIONS")
        if not world:
            raise SpecError("JOB_COMPLETION_INDEX is set but not the world size",
                            fix="set env BATCHGEN_WORLD_SIZE to the Job's completions (see examples/k8s)")
        return int(env["JOB_COMPLETION_INDEX"]), int(world), "Kubernetes Indexed Job"
    return 0, 1, "single process"

