"""The job's manifest, `_batchgen/job.json`: how the units were cut, and every job that wrote here.

    {"version": 2, "plan": {unit_rows, split_row_groups},      fixed by the first run
     "current": "<job id>",                                     the job of the latest run that changed it
     "jobs": [{"id", "fingerprint", "fields",                   settings that change results
               "input": {protocol, root, rows, shards: {name: {url, size, rows, footer, etag?, version_id?}}},
               "first_run", "forced", "changes", "ids"}, ...]}  one entry per (settings, input), oldest first

A job is its settings (JobSpec.fingerprint) on its input (InputRecord.digest); its id is a hash of
both, and every part records the id of the job that wrote it (Parquet metadata `job`), so `status`,
`_SUCCESS.json` and the report can say which rows each job wrote. A resume with other settings or
changed input is refused (the same check and wording for `run` and `validate`); `--force` adds a
job to the history instead of rewriting the record. Manifests of version 1 (one job, no input) read
as a history of one job whose id is its fingerprint, which is what its parts carry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from batchgen.errors import BatchgenError, OutputError, StorageError, StorageUnavailable
from batchgen.io.layout import MANIFEST
from batchgen.io.store import Store
from batchgen.job.spec import JobSpec
from batchgen.work.inputs import InputRecord
from batchgen.work.plan import PlanRule

log = logging.getLogger("batchgen")

VERSION = 2
CONFLICT = "the output folder holds results of a job with different settings"
INPUT_CONFLICT = "the input is not the one this output was generated from (committed rows are matched by shard and row)"
CONFLICT_FIX = ("use another output.path, or `batchgen run --force` to go on anyway (the rows of both jobs will be "
                "mixed; the manifest keeps both, and status says which rows each wrote)")


@dataclass
class JobRecord:
    """One job that wrote into the folder: its settings, its input, how it came to be."""

    id: str
    fingerprint: str
    fields: dict[str, Any]
    input: InputRecord | None  # None: recorded before inputs were (manifest version 1)
    first_run: float
    forced: bool = False
    changes: list[str] = field(default_factory=list)  # a forced job: what differed from the job before it
    ids: dict[str, Any] | None = None  # the duplicate-id check of this input: {"ids", "rows", "examples"}

    @property
    def rows(self) -> int | None:
        return self.input.rows if self.input is not None else None

    def as_record(self) -> dict[str, Any]:
        return {"id": self.id, "fingerprint": self.fingerprint, "fields": self.fields,
                "input": self.input.as_record() if self.input else None, "first_run": self.first_run,
                "forced": self.forced, "changes": self.changes, "ids": self.ids}

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> JobRecord:
        return cls(r["id"], r["fingerprint"], r.get("fields", {}), InputRecord.from_record(r.get("input")),
                   r.get("first_run") or 0.0, r.get("forced", False), r.get("changes", []), r.get("ids"))


def job_id(fingerprint: str, inp: InputRecord) -> str:
    return hashlib.sha256(f"{fingerprint}\x1f{inp.digest}".encode()).hexdigest()[:16]


@dataclass
class Manifest:
    plan: PlanRule
    jobs: list[JobRecord]
    current: str

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Manifest:
        if data.get("version", 1) < 2:  # one job; its parts carry its fingerprint as their job
            fp = data.get("fingerprint", "?")
            job = JobRecord(fp, fp, data.get("fields", {}), None, data.get("written") or 0.0)
            return cls(PlanRule.from_record(data.get("plan")), [job], fp)
        jobs = [JobRecord.from_record(j) for j in data["jobs"]]
        return cls(PlanRule.from_record(data.get("plan")), jobs, data.get("current") or jobs[-1].id)

    def as_record(self) -> dict[str, Any]:
        return {"version": VERSION, "plan": self.plan.as_record(), "current": self.current,
                "jobs": [j.as_record() for j in self.jobs]}

    def job(self, jid: str) -> JobRecord | None:
        return next((j for j in self.jobs if j.id == jid), None)

    @property
    def current_job(self) -> JobRecord:
        return self.job(self.current) or self.jobs[-1]

    def latest_with(self, fingerprint: str) -> JobRecord | None:
        return next((j for j in reversed(self.jobs) if j.fingerprint == fingerprint), None)

    def rows_owner(self, jid: str | None) -> str | None:
        """The job a part's `job` value names: an id, or (parts written before ids) a fingerprint."""
        if jid is None:
            return self.jobs[0].id if len(self.jobs) == 1 else None
        if self.job(jid) is not None:
            return jid
        job = next((j for j in self.jobs if j.fingerprint == jid), None)
        return job.id if job else jid


def read_manifest(store: Store) -> dict[str, Any] | None:
    """The manifest as written, or None if the job has not run into this output yet."""
    try:
        return json.loads(store.read_bytes(MANIFEST)) if store.exists(MANIFEST) else None
    except FileNotFoundError:
        return None


def load_manifest(store: Store) -> Manifest | None:
    """The manifest, for a run: unreadable output is a bad job (exit 2). A store that has not answered once
    in this run is one too (a wrong endpoint must not requeue forever on exit 75); an outage that starts
    after it answered stays StorageUnavailable (exit 75, rerun)."""
    try:
        raw = read_manifest(store)
    except StorageUnavailable as e:
        if store.answered:
            raise
        at = store.endpoint or "the default AWS S3 endpoint"
        raise OutputError(f"the output store at {at} never answered: {e.message}", where="output.storage.endpoint_url",
                          fix="check output.storage.endpoint_url (a typo?), output.storage.region and the network; "
                              "an outage after the store has answered exits 75 (rerun to resume)") from e
    except StorageError as e:
        raise OutputError(e.message, where=e.where, fix=e.fix) from e
    return Manifest.parse(raw) if raw is not None else None


def recorded_plan(store: Store) -> PlanRule | None:
    """The rule the job's first run cut its units with (None: no run yet)."""
    manifest = load_manifest(store)
    return manifest.plan if manifest is not None else None


def peek_manifest(store: Store | None) -> Manifest | None:
    """The manifest for operator commands (status, plan, validate): unreadable output reads as none yet."""
    if store is None:
        return None
    try:
        return load_manifest(store)
    except BatchgenError:
        return None


def settings_diff(manifest: Manifest | None, spec: JobSpec) -> list[str] | None:
    """Lines of settings that differ from the current job's, if no job in the history had `spec`'s settings."""
    if manifest is None:
        return None
    digest, fields = spec.fingerprint()
    if manifest.latest_with(digest) is not None:
        return None
    return diff_fields(manifest.current_job.fields, fields) or ["(unknown)"]


def refusal(settings: list[str] | None, inputs: list[str], where: str) -> OutputError | None:
    """One error for everything a resume must not skip over (None: nothing)."""
    parts = ([f"{CONFLICT}:\n    " + "\n    ".join(settings)] if settings else []) + \
            ([f"{INPUT_CONFLICT}:\n    " + "\n    ".join(inputs)] if inputs else [])
    return OutputError("\n  ".join(parts), where=where, fix=CONFLICT_FIX) if parts else None


def save_manifest(store: Store, manifest: Manifest) -> None:
    """Write the manifest whole. Also the job's first write: a missing bucket or denied access fails here,
    before the engine starts, as a bad job (exit 2); a store that is only unreachable stays exit 75."""
    try:
        store.put(MANIFEST, json.dumps(manifest.as_record(), indent=1).encode())
    except StorageUnavailable:
        raise
    except StorageError as e:
        raise OutputError(e.message, where=e.where, fix=e.fix) from e


def new_job(spec: JobSpec, inp: InputRecord, forced: bool = False, changes: list[str] | None = None) -> JobRecord:
    digest, fields = spec.fingerprint()
    return JobRecord(job_id(digest, inp), digest, fields, inp, time.time(), forced, changes or [])


def diff_fields(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff_fields(a, b, path + ".")
        elif a != b:
            out.append(f"{path}: {a!r} -> {b!r}")
    return out
