"""Everything a run checks and loads before its engine starts: a bad job fails here, exit 2, with
nothing written but the manifest of a first run.

    inputs (shards, columns, footers) and the manifest's job (settings, input identity: work.resume)
    -> the plan (recorded by the first run) -> this worker's units -> tokenizer and engine option names
    -> duplicate ids (once per input) -> the manifest written -> what is committed already
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from batchgen.errors import InputError, OutputError
from batchgen.io.idscan import DuplicateIds, find_duplicates, whole_shards
from batchgen.io.parts import check_passthrough, output_schema
from batchgen.io.shards import InputFiles, Unit
from batchgen.io.store import Store
from batchgen.job.spec import JobSpec
from batchgen.run.committer import PartSink
from batchgen.run.observers import RunObserver
from batchgen.run.tokenizer import load_tokenizer
from batchgen.work.ledger import Ledger
from batchgen.work.manifest import Manifest
from batchgen.work.ranks import assign
from batchgen.work.resume import Resume, resume

log = logging.getLogger("batchgen")


@dataclass
class Prepared:
    all_units: list[Unit]  # the whole job's (the completion check covers every rank)
    units: list[Unit]  # this worker's share (elastic: every unit, claimed one at a time)
    input: InputFiles
    store: Store
    ledger: Ledger
    sink: PartSink
    tokenizer: Any
    observer: RunObserver  # OpenAI output files and metrics, after each commit
    manifest: Manifest  # the jobs that wrote into the output (this run's among them)

    @property
    def skipped(self) -> int:
        """Rows of this share committed before this run."""
        return sum(u.rows for u in self.units) - self.ledger.remaining()


def prepare(spec: JobSpec, *, rank: int, world_size: int, worker: str, force: bool) -> Prepared:
    source = InputFiles.open(spec.input)
    store = Store.open(spec.output.path, spec.output.storage)
    if store.is_local and os.path.isfile(store.root):
        raise OutputError("output.path is a file, not a folder", where=store.url,
                          fix="point output.path at a folder (it is created if missing), e.g. beside this file")
    check_passthrough(spec)
    job = resume(spec, source, store, force=force)
    job.check_not_empty()
    plan = job.plan
    mine = list(plan.units) if spec.runtime.elastic else assign(plan.units, rank, world_size)
    tokenizer = load_tokenizer(spec.model)
    if spec.runtime.engine == "vllm":  # option names are checked before any engine memory is taken
        from batchgen.engine.vllm import check_engine_kwargs, check_sampling_extra

        check_engine_kwargs(spec.model)
        check_sampling_extra(spec.sampling)
    job.check(force)  # other settings or changed input: refused (unless --force)
    check_duplicate_ids(spec, source, job)
    job.save(store)
    ledger = Ledger(store, mine)
    ledger.load()
    total = sum(u.rows for u in mine)
    observer = RunObserver(spec, store, worker, total, total - ledger.remaining())
    sink = PartSink(schema=output_schema(spec, job.schema), id_column=spec.input.id_column,
                    compression=spec.output.compression, worker=worker, job_id=job.job.id,
                    settings=job.job.fingerprint, on_part=observer.on_part)
    return Prepared(all_units=plan.units, units=mine, input=source, store=store, ledger=ledger, sink=sink,
                    tokenizer=tokenizer, observer=observer, manifest=job.manifest)


def check_duplicate_ids(spec: JobSpec, source: InputFiles, job: Resume) -> None:
    """Ids repeated across the job's shards: an error (runtime.on_duplicate_ids: error) or a warning.

    Read once per input: the first run that reads these shards records the result in the manifest, so
    resumes and the other ranks of the job (which read the manifest) skip the scan. Ranks starting a job
    together each scan once (the id column only: seconds per 5M rows), then agree on the record."""
    if job.job.ids is None:
        t0 = time.monotonic()
        dup = find_duplicates(source, whole_shards(job.layouts), spec.input.id_column)
        log.info("ids of %d rows checked for duplicates in %.1fs", job.rows, time.monotonic() - t0)
        job.job.ids, job.dirty = dup.as_record(), True
    else:
        dup = DuplicateIds.from_record(job.job.ids)
    if not dup:
        return
    what = f"ids repeat across the job's shards: {dup.describe()}"
    if spec.runtime.on_duplicate_ids == "warn":
        log.warning("%s (runtime.on_duplicate_ids: warn: going on; every row is generated, but a join back by id "
                    "is ambiguous)", what)
        return
    raise InputError(what, where=f"column {spec.input.id_column!r}",
                     fix="make ids unique across all shards (e.g. prefix them with the shard name), or set "
                         "runtime.on_duplicate_ids: warn to go on (rows are resumed by position, so none is lost)")
