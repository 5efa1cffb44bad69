"""Model folders on object stores (s3://bucket/prefix/, any fsspec URL), copied once per machine.

vLLM and transformers load local folders; spot fleets keep their weights in S3. So a remote folder
is copied into the local cache first, and every engine of the node loads that copy:

    list the remote folder (size, ETag per file) -> take the folder's file lock (one process copies,
    the others wait) -> keep the files a killed copy already verified -> copy the rest, each to a
    temporary name, checked by size (and by MD5 where the ETag is one) -> write the completion record
    -> rename the whole folder into place

The cache folder appears whole or not at all: a copy killed halfway leaves only `<name>.partial`,
which the next copy continues. A folder whose record no longer matches the remote listing (the
weights were replaced) is copied again.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import posixpath
import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from batchgen.errors import SpecError, StorageError
from batchgen.io.retry import RetryPolicy, with_retries
from batchgen.io.store import fsync_dir, open_fs
from batchgen.job.spec import StorageSpec

log = logging.getLogger("batchgen.models")

COMPLETE = ".batchgen-complete.json"  # written last, inside the folder, before it is renamed into place
_COPIED = ".batchgen-copied.json"  # in <name>.partial: the files verified so far (a resumed copy keeps them)
# What a tokenizer (and `batchgen validate`) needs of a model folder: no weights.
TOKENIZER_FILES = ("*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken", "tokenizer*")
CHUNK = 8 << 20
COPY_THREADS = 4  # safetensors shards copy in parallel: one S3 stream is ~100 MB/s, the NIC is faster
WAIT_LOG_SECONDS = 30.0


@dataclass(frozen=True)
class RemoteFile:
    rel: str  # path below the folder's URL
    size: int
    etag: str | None  # the store's ETag (S3: the MD5 of single-part uploads), else None

    def record(self) -> dict:
        return {"size": self.size, "etag": self.etag}


def is_remote(path: str | None) -> bool:
    """A URL of another file system than the local disk (s3://, gs://, memory://, ...)."""
    return bool(path) and "://" in path and not path.startswith("file://")


def cache_folder(cache_root: str | Path, url: str, subset: str = "") -> Path:
    """Where `url` is cached: its last path segment (readable) plus a hash of the whole URL (unique)."""
    name = posixpath.basename(url.rstrip("/")) or "model"
    digest = hashlib.blake2b(f"{url.rstrip('/')}\x1f{subset}".encode(), digest_size=6).hexdigest()
    return Path(cache_root).expanduser() / f"{name}-{digest}{'.' + subset if subset else ''}"


def ensure_local(url: str, cache_root: str | Path, storage: StorageSpec, *, include: tuple[str, ...] = (),
                 subset: str = "", progress: Callable[[str, int, int], None] | None = None) -> Path:
    """The local copy of the folder at `url`, copied now if the cache lacks it or it is stale.

    `include`: only files whose name matches one of these patterns (a tokenizer-only copy, kept
    apart under `subset`). `progress(rel, done, total)` runs after each verified file.
    """
    fs, root = open_fs(url, storage)
    policy = RetryPolicy.from_spec(storage)
    files = _listing(fs, root.rstrip("/"), url, policy, include)
    dest = cache_folder(cache_root, url, subset)
    if _complete(dest, files):
        return dest
    from filelock import FileLock, Timeout

    dest.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(dest) + ".lock")
    waited = 0.0
    while True:
        try:
            lock.acquire(timeout=WAIT_LOG_SECONDS)
            break
        except Timeout:
            waited += WAIT_LOG_SECONDS
            log.info("waiting for another process copying %s into %s (%.0f s so far)", url, dest, waited)
    try:
        if not _complete(dest, files):  # the process we waited for may have copied it
            _copy(fs, root.rstrip("/"), url, files, dest, policy, progress)
    finally:
        lock.release()
    return dest


def _listing(fs, root: str, url: str, policy: RetryPolicy, include: tuple[str, ...]) -> list[RemoteFile]:
    found = with_retries(policy, f"list {url}", fs.find, root, detail=True)
    files = []
    for path, info in sorted(found.items()):
        rel = path[len(root):].lstrip("/")
        if info.get("type") == "directory" or not rel or rel.endswith("/"):
            continue
        if include and not any(fnmatch.fnmatch(posixpath.basename(rel), p) for p in include):
            continue
        etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
        files.append(RemoteFile(rel, int(info.get("size") or 0), str(etag).strip('"') if etag else None))
    if not files:
        raise SpecError(f"no files under {url}", where="model",
                        fix="point it at the folder holding config.json, the weights and the tokenizer files")
    return files


def _complete(dest: Path, files: list[RemoteFile]) -> bool:
    """A cached folder counts only with its record, matching the remote listing and the files on disk."""
    try:
        record = json.loads((dest / COMPLETE).read_text())
    except (OSError, ValueError):
        return False
    if record.get("files") != {f.rel: f.record() for f in files}:
        return False
    return all(_size(dest / f.rel) == f.size for f in files)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _copy(fs, root: str, url: str, files: list[RemoteFile], dest: Path, policy: RetryPolicy,
          progress: Callable[[str, int, int], None] | None) -> None:
    partial = dest.with_name(dest.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    copied = _read_copied(partial)
    _reuse_unchanged(dest, partial, files, copied)
    keep = {f.rel for f in files if copied.get(f.rel) == f.record() and _size(partial / f.rel) == f.size}
    _remove_strays(partial, {f.rel for f in files})
    todo = [f for f in files if f.rel not in keep]
    total_bytes = sum(f.size for f in todo)
    log.info("copying %s into %s: %d of %d files, %.2f GB%s", url, dest, len(todo), len(files), total_bytes / 1e9,
             f" ({len(keep)} already copied by an earlier, interrupted copy)" if keep else "")
    t0, done, state_lock = time.monotonic(), [len(keep)], threading.Lock()

    def one(f: RemoteFile) -> None:
        with_retries(policy, f"read {url.rstrip('/')}/{f.rel}", _download, fs, f"{root}/{f.rel}", partial / f.rel, f)
        with state_lock:
            copied[f.rel] = f.record()
            _write_json(partial / _COPIED, copied)
            done[0] += 1
            if progress is not None:
                progress(f.rel, done[0], len(files))

    with ThreadPoolExecutor(max_workers=COPY_THREADS, thread_name_prefix="batchgen-copy") as pool:
        for future in [pool.submit(one, f) for f in todo]:
            future.result()
    _write_json(partial / COMPLETE, {"url": url, "files": {f.rel: f.record() for f in files}, "copied_at": time.time()})
    (partial / _COPIED).unlink(missing_ok=True)
    _swap_into_place(partial, dest)
    log.info("copied %s in %.1f s", url, time.monotonic() - t0)


def _download(fs, remote: str, local: Path, f: RemoteFile) -> None:
    """One file to a temporary name, checked, then renamed: a file under its real name is whole."""
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}.download")
    md5 = hashlib.md5(usedforsecurity=False) if _is_md5(f.etag) else None
    try:
        with fs.open(remote, "rb", block_size=CHUNK) as src, open(tmp, "wb") as out:
            while chunk := src.read(CHUNK):
                out.write(chunk)
                if md5 is not None:
                    md5.update(chunk)
            out.flush()
            os.fsync(out.fileno())
        size = tmp.stat().st_size
        if size != f.size:
            raise StorageError(f"copy of {remote} has {size} bytes, the store lists {f.size}",
                               fix="rerun: the file is copied again (was it replaced during the copy?)")
        if md5 is not None and md5.hexdigest() != f.etag:
            raise StorageError(f"copy of {remote} does not match its ETag (MD5 {md5.hexdigest()} vs {f.etag})",
                               fix="rerun: the file is copied again (was it replaced during the copy?)")
        os.replace(tmp, local)
    finally:
        tmp.unlink(missing_ok=True)


def _is_md5(etag: str | None) -> bool:
    """S3's ETag is the content's MD5 for single-part uploads (32 hex digits); multipart ones end in -N."""
    return bool(etag) and len(etag) == 32 and all(c in "0123456789abcdef" for c in etag.lower())


def _reuse_unchanged(dest: Path, partial: Path, files: list[RemoteFile], copied: dict) -> None:
    """A stale cached folder (some remote files replaced) lends the files that did not change: hard links,
    so a new config does not copy 16 GB of weights again."""
    try:
        old = json.loads((dest / COMPLETE).read_text()).get("files", {})
    except (OSError, ValueError):
        return
    for f in files:
        if copied.get(f.rel) == f.record() or old.get(f.rel) != f.record() or _size(dest / f.rel) != f.size:
            continue
        target = partial / f.rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        try:
            os.link(dest / f.rel, target)
        except OSError:
            shutil.copyfile(dest / f.rel, target)
        copied[f.rel] = f.record()


def _read_copied(partial: Path) -> dict:
    try:
        return json.loads((partial / _COPIED).read_text())
    except (OSError, ValueError):
        return {}


def _remove_strays(partial: Path, wanted: set[str]) -> None:
    """Leftovers of a killed copy (temporary downloads) and files the remote folder no longer has."""
    for path in sorted(partial.rglob("*")):
        rel = path.relative_to(partial).as_posix()
        if path.is_file() and rel not in wanted and rel not in (_COPIED, COMPLETE):
            path.unlink()


def _swap_into_place(partial: Path, dest: Path) -> None:
    """Rename the finished copy to its final name; a stale copy there is moved aside first, then removed."""
    stale = None
    if dest.exists():
        stale = dest.with_name(f"{dest.name}.stale-{uuid.uuid4().hex[:8]}")
        os.rename(dest, stale)
    os.rename(partial, dest)
    fsync_dir(str(dest.parent))
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)


def _write_json(path: Path, obj: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
