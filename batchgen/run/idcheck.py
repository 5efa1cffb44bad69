"""Ids repeated across a job's shards, checked by `batchgen run` before its engine starts.

Exactly-once is keyed by shard and row, so nothing is lost to a repeated id, but the user's join
back by id is ambiguous: `runtime.on_duplicate_ids: error` (the default) stops the run, naming the ids
and where they are; `warn` logs the same and goes on. The scan (io.idscan) reads only the id column.
"""

from __future__ import annotations

import logging
import time

from batchgen.errors import InputError
from batchgen.io.idscan import DuplicateIds, find_duplicates, whole_shards
from batchgen.io.shards import InputFiles
from batchgen.job.spec import JobSpec
from batchgen.work.resume import Resume

log = logging.getLogger("batchgen")


def check_duplicate_ids(spec: JobSpec, source: InputFiles, job: Resume) -> None:
    """Read once per input: the first run that reads these shards records the result with its job in the
    manifest, so resumes and the job's other ranks and engines (which read the manifest) skip the scan.
    Ranks starting a job's first run together each scan once (seconds per 5M rows), then agree on the record."""
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
