"""Temp files that killed writers left in a local output folder, and which of them are safe to remove.

A local write is staged as _batchgen/tmp/<host>.<pid>.<token>.<name>.tmp (io.store). Another worker
may be writing one right now (another rank or engine, maybe on another host sharing the folder), so
a file is removed only when its writer is surely gone:

- written on this host: its process is gone, or the pid now belongs to a process started after the
  file was last written (a recycled pid);
- written on another host (no way to ask its processes): not touched for `max_age` seconds. A write
  stays in tmp/ for the time of one file write and fsync, so an hour is generous.

Files of batchgen versions that staged writes as `.tmp-*` beside the target (where globs see them)
are removed from parts/, stats/, openai/ and _batchgen/ once `legacy_age` old. Object stores have no temp files.
"""

from __future__ import annotations

import os
import socket
import time

import psutil

from batchgen.io.layout import LEASES, LEGACY_TEMP_PREFIX, META, OPENAI, PARTS, STATS, TMP, parse_temp
from batchgen.io.store import Store

STALE_TEMP_SECONDS = 3600.0
LEGACY_TEMP_SECONDS = 60.0


def remove_stale_temp(store: Store, max_age: float = STALE_TEMP_SECONDS, legacy_age: float = LEGACY_TEMP_SECONDS,
                      now: float | None = None) -> list[str]:
    """Remove the temp files of dead writers; returns their paths relative to the output."""
    if not store.is_local:
        return []
    now = time.time() if now is None else now
    host = socket.gethostname()
    removed = []
    for rel, mtime in _files(store, TMP):
        writer = parse_temp(rel.rsplit("/", 1)[1])
        gone = _writer_gone(writer[1], mtime) if writer and writer[0] == host else now - mtime > max_age
        if gone and _unlink(store.path(rel)):
            removed.append(rel)
    for folder in (PARTS, STATS, OPENAI, META, LEASES):
        for rel, mtime in _files(store, folder):
            if rel.rsplit("/", 1)[1].startswith(LEGACY_TEMP_PREFIX) and now - mtime > legacy_age and _unlink(store.path(rel)):
                removed.append(rel)
    return removed


def _writer_gone(pid: int, mtime: float) -> bool:
    try:
        return psutil.Process(pid).create_time() > mtime
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:  # not ours to ask (another user's process): it is alive
        return False


def _files(store: Store, folder: str) -> list[tuple[str, float]]:
    try:
        entries = list(os.scandir(store.path(folder)))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False):
                found.append((f"{folder}/{entry.name}", entry.stat(follow_symlinks=False).st_mtime))
        except FileNotFoundError:  # published or removed meanwhile
            continue
    return found


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:  # another run removed it first
        return False
