"""What a run works on: the job in the manifest matched to today's settings and input, and its plan.

    shards found -> the manifest's job with these settings (or the current one) -> the job's shards
    (recorded ones; shards added since are left out, with a warning) -> their columns, one schema,
    footers and identities -> what changed -> the plan, cut with the recorded rule under the recorded root

`batchgen run` refuses changed settings or changed input here (unless --force, which adds a job to
the manifest's history); `validate`, `status` and `plan` read the same answer without refusing.
"""

from __future__ import annotations

import datetime
import logging
import posixpath
from dataclasses import dataclass

import pyarrow as pa

from batchgen.errors import InputError, OutputError
from batchgen.io.layout import MANIFEST
from batchgen.io.shards import InputFiles, ShardLayout
from batchgen.io.store import Store
from batchgen.job.spec import JobSpec
from batchgen.work.inputs import Selection, compare, select
from batchgen.work.manifest import (JobRecord, Manifest, load_manifest, new_job, peek_manifest, refusal,
                                    save_manifest, settings_diff)
from batchgen.work.plan import Plan, plan_job

log = logging.getLogger("batchgen")


@dataclass
class Resume:
    manifest: Manifest  # as it will be written (the job below in it)
    job: JobRecord  # the job this run works as
    selection: Selection
    layouts: list[ShardLayout]
    schema: pa.Schema  # the columns the job reads, one type each across its shards
    plan: Plan
    refused: OutputError | None  # what a run without --force refuses (validate reports it)
    plan_source: str  # where the unit size came from, for people
    dirty: bool  # the manifest must be written

    @property
    def rows(self) -> int:
        return sum(lay.rows for lay in self.layouts)

    def check(self, force: bool) -> None:
        """Refuse other settings or changed input, unless forced (run and validate word it the same)."""
        if self.refused is not None and not force:
            raise self.refused

    def check_not_empty(self) -> None:
        if self.layouts and self.rows == 0:
            raise InputError(f"the input holds no rows: all {len(self.layouts)} shard(s) are empty", where="input.path",
                             fix="check the path and the step that wrote the shards; there is nothing to generate")

    def save(self, store: Store) -> None:
        if self.dirty:
            save_manifest(store, self.manifest)
            self.dirty = False


def resume(spec: JobSpec, source: InputFiles, store: Store | None, *, force: bool = False, strict: bool = True,
           found: list[str] | None = None, schemas: bool = True) -> Resume:
    """The job this run resumes (or starts); `refused` holds what a run refuses (Resume.check raises it).
    `strict` (a run): an unreadable output raises; otherwise (operator commands) it reads as empty.
    `force`: the job takes the input as it is now and, if anything differs, becomes a job of its own.
    `found`: the input's files, if discovered already. `schemas`: check the columns (status and plan need only
    the plan, not the schema: one read per shard less)."""
    found = source.discover() if found is None else found
    manifest = load_manifest(store) if strict and store is not None else peek_manifest(store)
    fingerprint = spec.fingerprint()[0]
    target = (manifest.latest_with(fingerprint) or manifest.current_job) if manifest else None
    sel = select(source, found, target.input if target else None)
    shards = list(found) if force else sel.shards  # --force takes the input as it is now
    schema = source.check_schemas(shards, spec.input_columns(), spec.free_type_columns()) if schemas else pa.schema([])
    layouts = source.layouts(shards)
    compare(sel, source, target.input if target else None)
    plan = plan_job(spec.input, layouts, manifest.plan if manifest else None, root=sel.root)
    where = store.where(MANIFEST) if store is not None else MANIFEST
    settings, inputs = settings_diff(manifest, spec), sel.refusals()
    changes = (settings or []) + inputs
    refused = refusal(settings, inputs, where)
    if manifest is None:
        job = new_job(spec, sel.record(source, shards))
        asked = "input.unit_rows" if spec.input.unit_rows is not None else "automatic: about 1/128 of the input's rows"
        return Resume(Manifest(plan.rule, [job], job.id), job, sel, layouts, schema, plan, None, asked, True)
    assert target is not None
    r = Resume(manifest, target, sel, layouts, schema, plan, refused,
               "recorded in _batchgen/job.json by the job's first run", False)
    if force and (refused is not None or sel.added):
        _fork(r, spec, source, shards, changes)
    else:
        _resume_target(r, source, shards, strict)
    return r


def _fork(r: Resume, spec: JobSpec, source: InputFiles, shards: list[str], changes: list[str]) -> None:
    """--force with other settings or input: a job of its own in the history (the earlier ones stay).
    `changes`: what differs from the job it was compared with, one line each (kept in its record)."""
    changes = changes + [f"{r.selection.name(s)}: added to input.path" for s in r.selection.added]
    job = new_job(spec, r.selection.record(source, shards), forced=True, changes=changes)
    known = r.manifest.job(job.id)
    if known is None:
        r.manifest.jobs.append(job)
    r.job = known or job
    r.manifest.current, r.dirty = r.job.id, True
    log.warning("--force: this run writes as job %s, next to the %d job(s) recorded in _batchgen/job.json "
                "(status shows the rows of each)", r.job.id, len(r.manifest.jobs) - (known is None))


def _resume_target(r: Resume, source: InputFiles, shards: list[str], strict: bool) -> None:
    job, m = r.job, r.manifest
    if job.input is None:  # a manifest of version 1: record the input now (nothing to compare it with)
        job.input, r.dirty = r.selection.record(source, shards), True
    if m.current != job.id:
        if strict:
            log.warning("resuming job %s (first run %s); the output's latest job was %s: rows of both stay, status "
                        "counts each", job.id, _when(job.first_run), m.current)
        m.current, r.dirty = job.id, True
    if r.selection.added and strict:
        log.warning("%d shard(s) in input.path were not there at the job's first run and are left out (the recorded "
                    "plan wins): %s. Run them as a job of their own (another output.path), or --force to add them",
                    len(r.selection.added), ", ".join(posixpath.basename(s) for s in r.selection.added[:10]))


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else "?"
