"""Work units: how a job's shards are cut. Pure: footers in (io.shards), units out.

A work unit is a row range of one shard: whole row groups gathered up to about `unit_rows` rows, and a
row group larger than that cut into pieces, so a shard written as one huge row group (pyarrow's
default holds 1Mi rows) is still shared by several engines. Unit keys are derived from the shard's
path relative to the input root and the first row, so they survive moving the input (local -> S3).
"""

from __future__ import annotations

import logging
import posixpath
import re
from dataclasses import dataclass
from typing import Sequence

from batchgen.io.shards import ShardLayout, Unit, common_root
from batchgen.job.spec import InputSpec

log = logging.getLogger("batchgen")


# The default before plans were recorded: a manifest without a plan was cut with it.
LEGACY_UNIT_ROWS = 200_000
# Default unit size: about 1/AUTO_UNITS of the job, a power of two within these bounds.
# The floor was 1,024 until session 10 of docs/benchmarks.md: a 2,500-row job (SYN, n=4) became units of 1,024,
# 1,024 and 452, one engine of two took the first two (its 1,024-row window plus its read-ahead) and the
# other sat idle for 20 s of a 30 s run. Each engine holds its window plus up to two open units, so units
# much smaller than a window let the engines' last rows end together.
AUTO_UNITS, MIN_AUTO_UNIT_ROWS, MAX_AUTO_UNIT_ROWS = 128, 256, 200_000
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


def plan_job(spec: InputSpec, layouts: Sequence[ShardLayout], recorded: PlanRule | None = None,
             root: str | None = None) -> Plan:
    """Cut shards into units of about `unit_rows` rows (see choose_rule and cut_shard). Unit keys are shard paths
    relative to `root` (default: the shards' common folder; a resume passes the one recorded by the first run,
    so a shard removed or added does not move the others' keys)."""
    if root is None:
        root = common_root([lay.shard for lay in layouts]) if layouts else ""
    rule = choose_rule(spec.unit_rows, recorded, sum(lay.rows for lay in layouts))
    units: list[Unit] = []
    for lay in layouts:
        name = _unit_name(lay.shard, root)
        if spec.format == "openai_batch":  # request files are small (the hosted API caps them): one unit each
            units.append(Unit(key=f"{name}@0", shard=lay.shard, row_start=0, row_end=lay.rows, row_groups=()))
        else:
            units += cut_shard(name, lay.shard, lay.groups_rows, rule)
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


def _unit_name(shard: str, root: str) -> str:
    rel = posixpath.relpath(shard, root) if root else shard
    rel = re.sub(r"\.(parquet|jsonl)$", "", rel)
    # A leading "." or "_" would read as a temp file or marker in parts/ (io.layout.parse_part).
    return re.sub(r"[^A-Za-z0-9._=-]+", "~", rel).lstrip("._") or "shard"
