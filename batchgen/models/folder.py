"""A model folder that appears whole or not at all, built once per cache by whoever gets there first."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def build_atomically(dest: Path, write: Callable[[Path], None]) -> Path:
    """Runs `write(tmp)` in a temp folder beside dest, then renames it to dest, so a crash or a concurrent
    builder never leaves a half-written folder behind. FileExistsError if dest exists (left untouched)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        write(tmp)
        for f in tmp.iterdir():
            f.chmod(0o644)  # some writers create 0600 files; the cache may be shared
        tmp.chmod(0o755)
        if dest.exists():
            raise FileExistsError(f"{dest} already exists")
        os.rename(tmp, dest)  # atomic; fails if another process's non-empty dest won the race
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and dest.is_dir():
            raise FileExistsError(f"{dest} already exists") from exc
        raise
    return dest


def ensure_folder(dest: Path, build: Callable[[Path], Path]) -> Path:
    """dest if it exists, else `build(dest)`. The loser of a build race discards its copy and uses the
    winner's (identical: builders are byte-stable)."""
    if dest.is_dir():
        return dest
    try:
        return build(dest)
    except FileExistsError:
        return dest
