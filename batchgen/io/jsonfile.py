"""One small JSON document from any fsspec URL (a JSON schema a job names by path), read with retries."""

from __future__ import annotations

import json
from typing import Any

from batchgen.errors import SpecError, StorageError
from batchgen.io.retry import RetryPolicy, with_retries
from batchgen.io.store import open_fs
from batchgen.job.spec import StorageSpec


def read_json(url: str, storage: StorageSpec, key: str) -> Any:
    """The parsed document at `url`; a missing, unreadable or non-JSON file is a SpecError naming `key`."""
    fs, path = open_fs(url, storage)
    try:
        data = with_retries(RetryPolicy.from_spec(storage), f"read {url}", fs.cat_file, path)
    except FileNotFoundError as e:
        raise SpecError(f"file not found: {url}", where=key,
                        fix="check the path (relative paths starting with ./ are relative to the job file)") from e
    except (StorageError, OSError) as e:
        raise SpecError(f"cannot read {url}: {getattr(e, 'message', e)}", where=key,
                        fix="check the path and input.storage (the file is read with the input's credentials)") from e
    try:
        return json.loads(data)
    except ValueError as e:
        raise SpecError(f"{url} is not valid JSON: {e}", where=key, fix="fix the file (e.g. `python -m json.tool FILE`)") from e
