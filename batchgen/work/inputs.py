"""The input a job was planned on, as its manifest records it, and how today's input compares.

Committed rows are matched to input rows by shard name and row number, so a resume must work on the
same shards with the same content: a shard rewritten, replaced by another folder's file of the same
name, or removed is a change the run refuses (like changed settings, `--force` to go on). A shard
added to input.path after the first run is left out: the recorded plan wins, with a warning.

Shards are named by their path relative to the input's root folder (recorded too), so the same
bytes under another root (local -> S3) are the same input, and a shard added in another folder does
not move the names (and unit keys) of the others.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass, field
from typing import Any, Sequence

from batchgen.io.shards import InputFiles, ShardIdentity, common_root


@dataclass
class InputRecord:
    """The shards of one job: the folder their names are relative to, and each one's identity."""

    protocol: str
    root: str  # a path on the input's file system (as fsspec strips it)
    shards: dict[str, ShardIdentity]  # relative name -> identity

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards.values())

    @property
    def digest(self) -> str:
        """Content only (no URLs, ETags): the same shards copied elsewhere digest the same."""
        items = sorted((name, s.size, s.rows, s.footer) for name, s in self.shards.items())
        return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]

    def as_record(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "root": self.root, "rows": self.rows,
                "shards": {name: s.as_record() for name, s in sorted(self.shards.items())}}

    @classmethod
    def from_record(cls, record: dict[str, Any] | None) -> InputRecord | None:
        if not record:
            return None
        return cls(record["protocol"], record["root"],
                   {name: ShardIdentity.from_record(s) for name, s in record.get("shards", {}).items()})


@dataclass
class Selection:
    """Today's shards against a record: which the job works on, and what differs."""

    root: str
    names: dict[str, str]  # shard path -> relative name (shards under the root)
    shards: list[str]  # the job's shards: recorded ones still there (or, with no record, every one found)
    added: list[str] = field(default_factory=list)  # found, not in the record: left out of the plan
    removed: list[str] = field(default_factory=list)  # recorded names not found
    changed: dict[str, list[str]] = field(default_factory=dict)  # name -> what differs

    def record(self, source: InputFiles, shards: Sequence[str] | None = None) -> InputRecord:
        """The input record of `shards` (default: the job's), from identities noted while reading footers."""
        protocol = _protocol(source)
        return InputRecord(protocol, self.root, {self.name(s): source.identities[s] for s in shards or self.shards})

    def name(self, shard: str) -> str:
        return self.names.get(shard) or shard

    def refusals(self) -> list[str]:
        """One line per shard whose change a resume must not skip over."""
        lines = [f"{name}: {'; '.join(what)}" for name, what in sorted(self.changed.items())]
        return lines + [f"{name}: recorded by the job's first run, no longer in input.path (removed or renamed)"
                        for name in self.removed]


def select(source: InputFiles, found: Sequence[str], recorded: InputRecord | None) -> Selection:
    """Match the shards found to the record by relative name (no footers read yet)."""
    if recorded is None:
        root = common_root(found) if found else ""
        return Selection(root, {s: _rel(s, root) for s in found}, list(found))
    same_place = recorded.protocol == _protocol(source) and any(_under(s, recorded.root) for s in found)
    root = recorded.root if same_place else (common_root(found) if found else "")
    names = {s: _rel(s, root) for s in found if _under(s, root)}
    kept = [s for s in found if names.get(s) in recorded.shards]
    sel = Selection(root, names, kept, added=[s for s in found if s not in kept])
    sel.removed = sorted(set(recorded.shards) - {names[s] for s in kept})
    return sel


def compare(sel: Selection, source: InputFiles, recorded: InputRecord | None) -> None:
    """Note in `sel.changed` every kept shard whose identity differs from the record (footers read already)."""
    if recorded is None:
        return
    for shard in sel.shards:
        name = sel.name(shard)
        what = source.identities[shard].changes(recorded.shards[name])
        if what:
            sel.changed[name] = what


def _protocol(source: InputFiles) -> str:
    p = source.fs.protocol
    return p[0] if isinstance(p, (tuple, list)) else p


def _under(path: str, root: str) -> bool:
    return not root or path == root or path.startswith(root.rstrip("/") + "/")


def _rel(path: str, root: str) -> str:
    return posixpath.relpath(path, root) if root else path
