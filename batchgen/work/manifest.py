"""The job's manifest, `_batchgen/job.json`: what shaped the outputs, and how the units were cut.

The first run writes it; every later run, rank, `validate`, `status` and `plan` reads it: a resume
with settings that change results is refused (the same check and wording for `run` and
`validate`), and the recorded plan keeps every run cutting the same units under the parts already
committed.
"""

from __future__ import annotations

import json
import time
from typing import Any

from batchgen.errors import BatchgenError, OutputError, StorageError, StorageUnavailable
from batchgen.io.layout import MANIFEST
from batchgen.io.shards import ShardLayout
from batchgen.io.store import Store
from batchgen.job.spec import JobSpec
from batchgen.work.plan import Plan, PlanRule, plan_job

CONFLICT = "the output folder holds results of a job with different settings"
CONFLICT_FIX = "use another output.path, or `batchgen run --force` to resume anyway (old and new rows will be mixed)"


def read_manifest(store: Store) -> dict[str, Any] | None:
    """The manifest as written, or None if the job has not run into this output yet."""
    try:
        return json.loads(store.read_bytes(MANIFEST)) if store.exists(MANIFEST) else None
    except FileNotFoundError:
        return None


def recorded_plan(store: Store) -> PlanRule | None:
    """The rule the job's first run cut its units with (None: no run yet). Manifests older than recorded
    plans were cut with the old fixed default."""
    try:
        old = read_manifest(store)
    except StorageError as e:
        if isinstance(e, StorageUnavailable):
            raise
        raise OutputError(e.message, where=e.where, fix=e.fix) from e
    return None if old is None else PlanRule.from_record(old.get("plan"))


def planned(spec: JobSpec, layouts: list[ShardLayout], store: Store | None) -> tuple[Plan, str]:
    """The job's units as its runs cut them (with the recorded unit size once the output has one), and
    where their size came from. `store`: the output, or None when it cannot be read (a first run's plan)."""
    try:
        recorded = recorded_plan(store) if store is not None else None
    except BatchgenError:  # no readable output yet: the plan a first run would make
        recorded = None
    plan = plan_job(spec.input, layouts, recorded)
    if recorded is not None:
        source = "recorded in _batchgen/job.json by the job's first run"
    else:
        source = "input.unit_rows" if spec.input.unit_rows is not None else "automatic: about 1/128 of the input's rows"
    return plan, source


def differences(old: dict[str, Any] | None, spec: JobSpec) -> list[str] | None:
    """The settings that differ from the manifest's, one line each; None if they agree (or no manifest)."""
    if old is None:
        return None
    digest, fields = spec.fingerprint()
    if old.get("fingerprint") == digest:
        return None
    return diff_fields(old.get("fields", {}), fields) or ["(unknown)"]


def check_job_manifest(store: Store, spec: JobSpec, force: bool, rule: PlanRule) -> None:
    """Refuse to resume into output written with settings that change results, unless forced; record
    `rule`, how the units were cut (on a resume, the recorded one: recorded_plan).

    Also the job's first write: a missing bucket or denied access fails here, before the engine starts,
    as a bad job (exit 2). A store that is only unreachable stays StorageUnavailable (exit 75, rerun).
    """
    try:
        old = read_manifest(store)
        diffs = differences(old, spec)
        if diffs and not force:
            raise OutputError(f"{CONFLICT}:\n    " + "\n    ".join(diffs), where=store.where(MANIFEST), fix=CONFLICT_FIX)
        if old is None or diffs:
            digest, fields = spec.fingerprint()
            record = {"fingerprint": digest, "fields": fields, "written": time.time(), "plan": rule.as_record()}
            store.put(MANIFEST, json.dumps(record, indent=1).encode())
    except StorageUnavailable:
        raise
    except StorageError as e:
        raise OutputError(e.message, where=e.where, fix=e.fix) from e


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
