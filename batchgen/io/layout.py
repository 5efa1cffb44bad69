"""The output folder's names: every path batchgen writes under `output.path` is built here.

    parts/<unit>.<seq>.parquet      committed rows (the truth; a part is visible whole or not at all)
    stats/<unit>.<seq>.parquet      one stats row per part, written right after it
    openai/<unit>.<seq>.jsonl       OpenAI Batch API output of each part (output.openai_batch_jsonl)
    _batchgen/job.json              the job's manifest: settings that shape outputs, the recorded plan
    _batchgen/summary-<worker>.json what each worker's last run did
    _batchgen/leases/<unit>.<gen>.json   elastic work-unit leases
    _batchgen/report.{png,html}     `batchgen report`
    _batchgen/tmp/<host>.<pid>.<token>.<name>.tmp   a local file being written, before its publish
    _SUCCESS.json                   the completion record, written once every unit is committed

Unit keys never start with "." or "_", so a part's name never reads as a hidden file or a marker.
Temp files live under _batchgen/tmp/ and end in `.tmp`, so no glob of parts/ or stats/ (nor any
`*.parquet` glob) ever reads one, whatever a killed writer left behind.
"""

from __future__ import annotations

import re

PARTS, STATS, META, OPENAI = "parts", "stats", "_batchgen", "openai"
SUCCESS = "_SUCCESS.json"
MANIFEST = f"{META}/job.json"
LEASES = f"{META}/leases"
REPORT_PNG, REPORT_HTML = f"{META}/report.png", f"{META}/report.html"
TMP = f"{META}/tmp"

_PART = re.compile(r"^(?P<unit>[^._].*)\.(?P<seq>\d{6})\.parquet$")
_LEASE = re.compile(r"^(?P<unit>.+)\.(?P<gen>\d{6})\.json$")
_TEMP = re.compile(r"^(?P<host>.+)\.(?P<pid>\d+)\.(?P<token>[0-9a-f]{32})\.(?P<name>.+)\.tmp$")
# What batchgen before _batchgen/tmp/ left in the target folder itself when killed mid-write.
LEGACY_TEMP_PREFIX = ".tmp-"


def part_file(unit: str, seq: int) -> str:
    """The file name of part `seq` of `unit` (the same name under parts/ and stats/)."""
    return f"{unit}.{seq:06d}.parquet"


def part_path(unit: str, seq: int) -> str:
    return f"{PARTS}/{part_file(unit, seq)}"


def stats_path(unit: str, seq: int) -> str:
    return f"{STATS}/{part_file(unit, seq)}"


def openai_file(unit: str, seq: int) -> str:
    return f"{unit}.{seq:06d}.jsonl"


def openai_path(unit: str, seq: int) -> str:
    return f"{OPENAI}/{openai_file(unit, seq)}"


def parse_part(name: str) -> tuple[str, int] | None:
    """(unit, seq) of a part file name; None for anything else (temp files, foreign files)."""
    m = _PART.match(name)
    return (m["unit"], int(m["seq"])) if m else None


def summary_path(worker: str) -> str:
    return f"{META}/summary-{worker}.json"


def summary_worker(name: str) -> str | None:
    """The worker of a summary file name under _batchgen/, or None."""
    if name.startswith("summary-") and name.endswith(".json"):
        return name[len("summary-"):-len(".json")]
    return None


def probe_path(token: str) -> str:
    """A write probe (`batchgen validate`), deleted right after."""
    return f"{META}/.probe-{token}"


def lease_path(unit: str, gen: int) -> str:
    return f"{LEASES}/{unit}.{gen:06d}.json"


def parse_lease(name: str) -> tuple[str, int] | None:
    m = _LEASE.match(name)
    return (m["unit"], int(m["gen"])) if m else None


def temp_path(host: str, pid: int, token: str, name: str) -> str:
    """Where a local write of `name` by process `pid` on `host` is staged before its publish (`token`: 32 hex)."""
    return f"{TMP}/{host}.{pid}.{token}.{name}.tmp"


def parse_temp(name: str) -> tuple[str, int] | None:
    """(host, pid) of the writer of a temp file name under _batchgen/tmp/; None for anything else."""
    m = _TEMP.match(name)
    return (m["host"], int(m["pid"])) if m else None
