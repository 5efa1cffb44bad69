"""Images for vision prompts: fetched from wherever a row points (bytes, data: URL, http(s), any
fsspec URL or local path) and decoded with Pillow.

This runs in the reader thread, beside rendering and tokenizing, so the engine loop only ever sees
decoded images. Every failure is an `ImageError` with a reason a user can act on; the caller turns
it into the row's error.
"""

from __future__ import annotations

import base64
import binascii
import io
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from batchgen.io.store import open_fs
from batchgen.job.spec import StorageSpec


class ImageError(Exception):
    """This image cannot be used; the message says why."""


class ImageFetcher:
    """Loads images as RGB `PIL.Image`s. One per reader: it keeps a file system per URL scheme."""

    def __init__(self, storage: StorageSpec, timeout: float):
        self.storage, self.timeout = storage, timeout
        self._fs: dict[str, Any] = {}

    def load(self, ref: Any) -> Any:
        return decode(self.read(ref))

    def read(self, ref: Any) -> bytes:
        """The encoded image: `ref` is bytes, a path/URL string, or a {bytes, path} / {url} struct."""
        if isinstance(ref, (bytes, bytearray, memoryview)):
            return bytes(ref)
        if isinstance(ref, dict):  # Hugging Face datasets' Image struct, or an OpenAI {url: ...}
            if ref.get("bytes"):
                return bytes(ref["bytes"])
            ref = ref.get("path") or ref.get("url")
        if not isinstance(ref, str) or not ref.strip():
            raise ImageError(f"no image: expected bytes, a path or a URL, got {type(ref).__name__}")
        if ref.startswith("data:"):
            return _data_url(ref)
        if ref.startswith(("http://", "https://")):
            return self._http(ref)
        return self._file(ref)

    def _http(self, url: str) -> bytes:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "batchgen"}),
                                        timeout=self.timeout) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            raise ImageError(f"{_short(url)}: HTTP {e.code} {e.reason}") from e
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ImageError(f"{_short(url)}: cannot fetch ({reason}; timeout {self.timeout:g} s)") from e

    def _file(self, url: str) -> bytes:
        scheme = url.split("://", 1)[0] if "://" in url else "file"
        try:
            fs = self._fs.get(scheme)
            if fs is None:
                fs = self._fs[scheme] = open_fs(url, self.storage)[0]
            return fs.cat_file(fs._strip_protocol(url))
        except FileNotFoundError as e:
            raise ImageError(f"{_short(url)}: no such file") from e
        except Exception as e:  # noqa: BLE001 - any store error means this row's image is unreadable
            raise ImageError(f"{_short(url)}: cannot read ({type(e).__name__}: {str(e)[:200]})") from e


def decode(data: bytes) -> Any:
    """Decode now (not lazily, in the engine's thread) and convert to RGB, as vLLM's own loader does."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB") if im.mode != "RGB" else im.copy()
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds (UnidentifiedImageError, DecompressionBombError, OSError)
        raise ImageError(f"not a readable image ({len(data)} bytes: {type(e).__name__}: {str(e)[:200]})") from e


def _data_url(url: str) -> bytes:
    head, sep, payload = url.partition(",")
    if not sep:
        raise ImageError("data: URL without a ',' before its payload")
    try:
        return base64.b64decode(payload, validate=False) if head.endswith(";base64") else \
            urllib.parse.unquote_to_bytes(payload)
    except (binascii.Error, ValueError) as e:
        raise ImageError(f"data: URL with a bad base64 payload ({e})") from e


def _short(url: str) -> str:
    return url if len(url) <= 120 else url[:117] + "..."
