"""A folder on any fsspec file system, with the few operations batchgen's commit protocol needs.

Whole-object visibility is the point: locally a file is written under _batchgen/tmp/ (where no
glob of the output looks, so a writer killed mid-write leaves nothing a reader counts) and then
published into its folder by rename or hard link (both atomic on one file system); on object
stores it is a single PUT (an object is visible only once its upload completes; no temp object).
`create_exclusive` is create-if-absent: a hard link locally, a conditional PUT (If-None-Match: *) on S3.
"""

from __future__ import annotations

import os
import posixpath
import socket
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from batchgen.errors import StorageError
from batchgen.io.layout import temp_path
from batchgen.io.retry import RetryPolicy, is_missing_bucket, with_retries
from batchgen.job.spec import StorageSpec


def storage_options(url: str, spec: StorageSpec, client_attempts: int = 2) -> dict[str, Any]:
    """fsspec options for `url`. Unset fields leave the AWS credential chain in charge.

    `client_attempts` is botocore's own per-request attempts: 2 for streaming reads (a cheap retry of
    one range request), 1 for Store, whose calls our policy retries, counts and bounds.
    """
    if not url.startswith(("s3://", "s3a://")):
        return {}
    opts: dict[str, Any] = {"anon": spec.anon}
    client: dict[str, Any] = {}
    if spec.endpoint_url:
        client["endpoint_url"] = spec.endpoint_url
    if spec.region:
        client["region_name"] = spec.region
    if client:
        opts["client_kwargs"] = client
    if spec.profile:
        opts["profile"] = spec.profile
    if spec.key:
        opts["key"] = spec.key
    if spec.secret is not None:
        opts["secret"] = spec.secret.get_secret_value()
    # botocore's own retries stay small: ours (with jitter and a clear final error) wrap every call.
    # total_max_attempts counts the first request; botocore's `max_attempts` would add one retry more.
    opts["config_kwargs"] = {"retries": {"total_max_attempts": client_attempts, "mode": "standard"}, "connect_timeout": 5, "read_timeout": 30}
    opts["skip_instance_cache"] = True
    return opts


def open_fs(url: str, spec: StorageSpec, client_attempts: int = 2) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(url, **storage_options(url, spec, client_attempts))
    return fs, path


@dataclass
class Store:
    """A root folder plus relative paths below it."""

    fs: fsspec.AbstractFileSystem
    root: str
    retry: RetryPolicy
    url: str

    @classmethod
    def open(cls, url: str, spec: StorageSpec) -> Store:
        fs, root = open_fs(url, spec, client_attempts=1)
        if isinstance(getattr(fs, "retries", None), int):
            # s3fs also retries throttling in its own loop (no jitter, uncounted): commits leave every
            # retry to our policy, so it is bounded by the spec and shows in the stats.
            fs.retries = 1
        return cls(fs=fs, root=root.rstrip("/"), retry=RetryPolicy.from_spec(spec), url=url.rstrip("/"))

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel) if rel else self.root

    def where(self, rel: str) -> str:
        """A user-facing location (URL), for messages."""
        return posixpath.join(self.url, rel) if rel else self.url

    def _call(self, what: str, rel: str, fn, *args, **kwargs):
        return with_retries(self.retry, f"{what} {self.where(rel)}", fn, *args, **kwargs)

    def read_bytes(self, rel: str) -> bytes:
        return self._call("read", rel, self.fs.cat_file, self.path(rel))

    def exists(self, rel: str) -> bool:
        return self._call("check", rel, self.fs.exists, self.path(rel))

    def listdir(self, rel: str) -> list[str]:
        """Names (not paths) of the files directly under `rel`; empty if it does not exist."""
        target = self.path(rel)

        def ls() -> list[str]:
            self.fs.invalidate_cache(target)
            try:
                entries = self.fs.ls(target, detail=True)
            except FileNotFoundError as e:
                if is_missing_bucket(e):
                    raise  # not "nothing committed yet": with_retries names the bucket
                return []
            return sorted(posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "file")

        return self._call("list", rel, ls)

    def put(self, rel: str, data: bytes) -> None:
        """Write a whole object; readers see the old one or the new one, never a part."""
        if self.is_local:
            self._local_write(rel, data, exclusive=False)
        else:
            self._call("write", rel, self.fs.pipe_file, self.path(rel), data)

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Create `rel` only if absent. True if we created it, False if it already existed.

        On S3 this is one conditional PUT (If-None-Match: *); a 412 arrives as FileExistsError (s3fs
        maps it, and with_retries maps a bare 412 from other stores). After a retried PUT whose first
        response was lost, False may mean "our own earlier attempt landed": the caller checks.
        """
        if self.is_local:
            return self._local_write(rel, data, exclusive=True)
        try:
            self._call("create", rel, self.fs.pipe_file, self.path(rel), data, mode="create")
            return True
        except FileExistsError:
            return False

    def delete(self, rel: str) -> None:
        try:
            self._call("delete", rel, self.fs.rm_file, self.path(rel))
        except FileNotFoundError:
            pass

    def makedirs(self, rel: str) -> None:
        if self.is_local:
            os.makedirs(self.path(rel), exist_ok=True)

    def _local_write(self, rel: str, data: bytes, *, exclusive: bool) -> bool:
        final = self.path(rel)
        folder = os.path.dirname(final)
        # The writer's host and pid are in the name: a later run removes only what a dead writer left (io.leftovers).
        tmp = self.path(temp_path(socket.gethostname(), os.getpid(), uuid.uuid4().hex, os.path.basename(final)))
        _makedirs(folder)
        _makedirs(os.path.dirname(tmp))
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if exclusive:
                try:
                    os.link(tmp, final)  # fails if `final` exists: create-if-absent, atomically
                except FileExistsError:
                    return False
            else:
                os.replace(tmp, final)
            fsync_dir(folder)
            return True
        except PermissionError as e:
            raise StorageError(f"permission denied writing {final}", fix="choose a writable output.path") from e
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _makedirs(folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
    except (FileExistsError, NotADirectoryError, PermissionError) as e:
        raise StorageError(f"cannot create folder {folder}: {e.strerror}",
                           fix="output.path must be a folder you can write (a file stands in its way, or permissions)") from e


def fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
