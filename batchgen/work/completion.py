"""`_SUCCESS.json`: the completion record, written once every unit of the current job's plan is committed.

It stays true for every job that wrote into the folder (a `--force` adds jobs, io.layout):

    {"complete": true, "job": "<current job id>", "settings": "<its fingerprint>",
     "units": N, "rows": N,                      the current plan: every row committed
     "mixed": false,                             rows of more than one job in it
     "jobs": {"<id>": {"rows": n,                rows this job wrote (in the whole folder)
                       "rows_total": n,          rows of its own input
                       "complete": bool,         all of them written by it
                       "forced": bool}},
     "finished_at": ..., "by": "<worker>"}
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Sequence

from batchgen.io.shards import Unit
from batchgen.work.manifest import Manifest


def owners(manifest: Manifest, rows_by_job: Counter[str | None]) -> Counter[str]:
    """Rows by job id: part values mapped to the manifest's jobs (old parts name their settings fingerprint)."""
    out: Counter[str] = Counter()
    for value, rows in rows_by_job.items():
        out[manifest.rows_owner(value) or "unknown"] += rows
    return out


def completion_record(manifest: Manifest, units: Sequence[Unit], in_plan: Counter[str | None],
                      foreign: Counter[str | None], worker: str) -> dict[str, Any]:
    """The record for a folder whose current plan (`units`) is all committed; `in_plan` / `foreign`: rows by
    the job named in each part, inside the plan's units and in other units (work.ledger)."""
    mine = owners(manifest, in_plan)
    everywhere = owners(manifest, in_plan + foreign)
    jobs = {}
    for jid in sorted(everywhere, key=lambda j: _order(manifest, j)):
        rec = manifest.job(jid)
        total = rec.rows if rec is not None else None
        jobs[jid] = {"rows": everywhere[jid], "rows_total": total, "complete": total is not None and everywhere[jid] == total,
                     "forced": bool(rec and rec.forced)}
    current = manifest.current_job
    return {"complete": True, "job": current.id, "settings": current.fingerprint, "units": len(units),
            "rows": sum(u.rows for u in units), "mixed": len(mine) > 1, "jobs": jobs, "finished_at": time.time(),
            "by": worker}


def _order(manifest: Manifest, jid: str) -> int:
    ids = [j.id for j in manifest.jobs]
    return ids.index(jid) if jid in ids else len(ids)
