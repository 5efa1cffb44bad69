"""What work exists and who does it: shard discovery, work units, deterministic rank assignment.

A work unit is a row range of one shard: whole row groups gathered up to about `unit_rows` rows, and a
row group larger than that cut into pieces, so a shard written as one huge row group (pyarrow's
default holds 1Mi rows) is still shared by several engines. Unit keys are derived from the shard's
path relative to the input root and the first row, so they survive moving the input (local -> S3).
"""

from __future__ import annotations

import glob as globlib
import logging
import os
import posixpath
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import pyarrow.parquet as pq

from batchgen.errors import InputError, SpecError, StorageUnavailable
from batchgen.io.openai_batch import count_rows
from batchgen.io.retry import RetryPolicy, retry_transient
from batchgen.io.store import open_fs
from batchgen.spec import InputSpec

log = logging.getLogger("batchgen")


@dataclass(frozen=True, order=True)
class Unit:
    key: str
    shard: str
    row_start: int
    row_end: int
    row_groups: tuple[int, ...]

    @property
    def rows(self) -> int:
        return self.row_end - self.row_start


def discover_shards(spec: InputSpec) -> list[str]:
    """Every input file the spec names, as fsspec paths, sorted; an error if there are none."""
    fs, _ = open_fs(spec.first_url, spec.storage)
    patterns = spec.path if isinstance(spec.path, list) else [spec.path]
    suffix = ".jsonl" if spec.format == "openai_batch" else ".parquet"
    found: list[str] = []
    policy = RetryPolicy.from_spec(spec.storage)
    for pattern in patterns:
        _, path = open_fs(pattern, spec.storage)
        try:
            hits = retry_transient(policy, f"list {pattern}", _matches, fs, path, suffix)
        except PermissionError as e:
            raise InputError(f"access denied listing {pattern}", where="input.path", fix="check the credentials and input.storage") from e
        except OSError as e:
            raise InputError(f"cannot list {pattern}: {e}", where="input.path") from e
        if not hits:
            raise InputError(f"no {suffix} files match {pattern}", where="input.path",
                             fix="check the path; directories are searched recursively, globs like data/*.parquet work")
        found += hits
    return sorted(dict.fromkeys(found))


def _matches(fs, path: str, suffix: str) -> list[str]:
    if globlib.has_magic(path):
        return [p for p in fs.glob(path) if fs.isfile(p)]
    if fs.isdir(path):
        return [p for p in fs.find(path) if p.endswith(suffix) and not posixpath.basename(p).startswith((".", "_"))]
    return [path] if fs.exists(path) else []


# The default before plans were recorded: a manifest without a plan was cut with it.
LEGACY_UNIT_ROWS = 200_000
# Default unit size: about 1/AUTO_UNITS of the job, a power of two within these bounds.
AUTO_UNITS, MIN_AUTO_UNIT_ROWS, MAX_AUTO_UNIT_ROWS = 128, 1024, 200_000
# A piece of a row group is read by decoding the group up to the piece's end: a group cut in k pieces is
# decoded about k/2 times in all. At most this many pieces per group bounds that (k/2 = 16).
MAX_PIECES_PER_GROUP = 32


@dataclass(frozen=True)
class PlanRule:
    """How a job's shards are cut; recorded in its manifest by its first run, so every later run, rank
    and engine cuts the same units under the parts already committed."""

    unit_rows: int
    # Cut row groups larger than unit_rows. Plans recorded before this existed kept row groups whole.
    split_row_groups: bool = True

    def as_record(self) -> dict:
        return {"unit_rows": self.unit_rows, "split_row_groups": self.split_row_groups}

    @classmethod
    def from_record(cls, record: dict | None) -> PlanRule:
        """A manifest's `plan`; manifests without one were cut whole-group with the old fixed default."""
        if not record:
            return cls(LEGACY_UNIT_ROWS, split_row_groups=False)
        return cls(int(record["unit_rows"]), bool(record.get("split_row_groups", False)))


@dataclass(frozen=True)
class Plan:
    units: list[Unit]
    rule: PlanRule

    @property
    def unit_rows(self) -> int:
        return self.rule.unit_rows


def auto_unit_rows(total_rows: int) -> int:
    """About total/128 rows, rounded up to a power of two, within [1024, 200000]: enough units for many
    engines to share a job and for the last ones to end together, few enough to keep parts and leases cheap."""
    want = max(1, -(-total_rows // AUTO_UNITS))
    return min(MAX_AUTO_UNIT_ROWS, max(MIN_AUTO_UNIT_ROWS, 1 << (want - 1).bit_length()))


def choose_rule(asked: int | None, recorded: PlanRule | None, total_rows: int) -> PlanRule:
    """The plan's rule: the one recorded by the job's first run wins, so resumes and every rank cut the
    same units; else the job file's unit size; else auto_unit_rows."""
    if recorded is not None:
        if asked is not None and asked != recorded.unit_rows:
            log.warning("input.unit_rows is %d but this output was planned with %d: keeping %d (units must not "
                        "change under committed parts; use a new output.path for another plan)",
                        asked, recorded.unit_rows, recorded.unit_rows)
        return recorded
    return PlanRule(asked if asked is not None else auto_unit_rows(total_rows))


def plan_units(spec: InputSpec, shards: Sequence[str], recorded: PlanRule | None = None) -> list[Unit]:
    return plan_job(spec, shards, recorded).units


def plan_job(spec: InputSpec, shards: Sequence[str], recorded: PlanRule | None = None) -> Plan:
    """Cut shards into units of about `unit_rows` rows (see choose_rule and cut_shard)."""
    fs, _ = open_fs(spec.first_url, spec.storage)
    policy = RetryPolicy.from_spec(spec.storage)
    root = _common_root(shards)
    layouts = [(shard, _row_groups(spec, fs, policy, shard)) for shard in shards]
    rule = choose_rule(spec.unit_rows, recorded, sum(sum(groups) for _, groups in layouts))
    units: list[Unit] = []
    for shard, groups_rows in layouts:
        name = _unit_name(shard, root)
        if spec.format == "openai_batch":  # request files are small (the hosted API caps them): one unit each
            units.append(Unit(key=f"{name}@0", shard=shard, row_start=0, row_end=groups_rows[0], row_groups=()))
        else:
            units += cut_shard(name, shard, groups_rows, rule)
    return Plan(units, rule)


def cut_shard(name: str, shard: str, groups_rows: Sequence[int], rule: PlanRule) -> list[Unit]:
    """Whole row groups gathered until a unit holds `unit_rows` rows or more; with split_row_groups, a row
    group larger than `unit_rows` becomes equal pieces of at most `unit_rows` rows (at most
    MAX_PIECES_PER_GROUP pieces), each a unit."""
    units: list[Unit] = []
    start, groups, offset = 0, [], 0  # pending whole groups from row `start`; `offset`: this group's first row

    def flush() -> None:
        nonlocal start, groups
        if groups:
            units.append(Unit(key=f"{name}@{start}", shard=shard, row_start=start, row_end=offset, row_groups=tuple(groups)))
        start, groups = offset, []

    for rg, rows in enumerate(groups_rows):
        if rule.split_row_groups and rows > rule.unit_rows:
            flush()
            pieces = min(-(-rows // rule.unit_rows), MAX_PIECES_PER_GROUP)
            for i in range(pieces):
                a, b = offset + rows * i // pieces, offset + rows * (i + 1) // pieces
                units.append(Unit(key=f"{name}@{a}", shard=shard, row_start=a, row_end=b, row_groups=(rg,)))
            offset += rows
            start = offset
            continue
        groups.append(rg)
        offset += rows
        if offset - start >= rule.unit_rows:
            flush()
    flush()
    return units


def _row_groups(spec: InputSpec, fs, policy: RetryPolicy, shard: str) -> list[int]:
    """Rows per row group of a Parquet shard; [rows] for a JSONL request file."""
    if spec.format == "openai_batch":
        try:
            with fs.open(shard, "rb") as f:
                return [count_rows(f)]
        except OSError as e:
            raise InputError(f"cannot read the request file: {e}", where=shard) from e
    try:
        meta = retry_transient(policy, f"read the footer of {shard}", _footer, fs, shard)
    except StorageUnavailable:
        raise
    except Exception as e:  # noqa: BLE001 - any failure here means the file is not usable Parquet
        raise InputError(f"cannot read Parquet footer: {e}", where=shard, fix="is it a Parquet file? rewrite it with pyarrow/polars") from e
    return [meta.row_group(rg).num_rows for rg in range(meta.num_row_groups)]


def _footer(fs, shard: str) -> pq.FileMetaData:
    with fs.open(shard, "rb") as f:
        return pq.ParquetFile(f).metadata


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



def _common_root(shards: Sequence[str]) -> str:
    if len(shards) == 1:
        return posixpath.dirname(shards[0])
    return posixpath.commonpath(shards) if all(s.startswith("/") for s in shards) else os.path.commonpath(shards)


def _unit_name(shard: str, root: str) -> str:
    rel = posixpath.relpath(shard, root) if root else shard
    rel = re.sub(r"\.(parquet|jsonl)$", "", rel)
    # A leading "." or "_" would read as a temp file or marker in parts/ (checkpoint.parse_part).
    return re.sub(r"[^A-Za-z0-9._=-]+", "~", rel).lstrip("._") or "shard"
