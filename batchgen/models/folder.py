"""Model folders written whole or not at all: built in a temporary folder beside the destination, renamed."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def build_folder(dest: Path, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` fills a temporary folder, which then becomes `dest` (atomic rename), so a crash or a
    concurrent builder never leaves a half-written folder. Raises FileExistsError if dest exists (then it
    is left untouched)."""
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


def ensure_folder(dest: Path, write: Callable[[Path], None]) -> Path:
    """`dest`, built once. Safe under concurrency: the loser of a build race uses the winner's folder."""
    dest = Path(dest).expanduser()
    if dest.is_dir():
        return dest
    try:
        return build_folder(dest, write)
    except FileExistsError:
        return dest
