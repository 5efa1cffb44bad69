"""Bounded retries with exponential backoff and full jitter, for transient storage errors only."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from batchgen.errors import StorageError
from batchgen.spec import StorageSpec

log = logging.getLogger("batchgen.io")
T = TypeVar("T")

# Words in an error that mean "try again": 5xx, throttling, resets, timeouts.
_TRANSIENT_MARKERS = (
    "SlowDown", "Throttl", "RequestTimeout", "ServiceUnavailable", "InternalError", "500", "502", "503", "504",
    "Connection", "connection", "Timeout", "timed out", "reset", "EndpointConnectionError", "ServerDisconnected",
    "Could not connect", "Broken pipe",
)


@dataclass
class RetryPolicy:
    attempts: int = 8
    base: float = 0.5
    cap: float = 20.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    # Observed retries, for stats ("uploads were slow"): a plain counter, not a global.
    retried: int = 0

    @classmethod
    def from_spec(cls, spec: StorageSpec) -> RetryPolicy:
        return cls(attempts=max(1, spec.retries), base=spec.retry_base_seconds, cap=spec.retry_max_seconds)

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap, self.base * 2**attempt))


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (PermissionError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    text = f"{type(exc).__name__} {exc}"
    return any(m in text for m in _TRANSIENT_MARKERS)


def with_retries(policy: RetryPolicy, what: str, fn: Callable[..., T], *args, **kwargs) -> T:
    """Call `fn`; retry transient errors; turn permanent ones into a StorageError naming `what`."""
    for attempt in range(policy.attempts):
        try:
            return fn(*args, **kwargs)
        except (FileNotFoundError, FileExistsError):
            raise  # callers give these a meaning (absent, already created)
        except PermissionError as e:
            raise StorageError(f"access denied: {what}", fix="check the credentials, the bucket policy and storage.profile/key") from e
        except Exception as e:  # noqa: BLE001 - classified just below
            if not is_transient(e):
                raise StorageError(f"failed to {what}: {_clean(e)}") from e
            if attempt + 1 == policy.attempts:
                raise StorageError(f"gave up after {policy.attempts} attempts to {what}: {_clean(e)}",
                                   fix="the store kept failing; rerun the same command to resume") from e
            policy.retried += 1
            delay = policy.delay(attempt)
            log.warning("transient error on %s (%s); retry %d/%d in %.1fs", what, _clean(e), attempt + 1, policy.attempts - 1, delay)
            policy.sleep(delay)
    raise AssertionError("unreachable")


def _clean(exc: BaseException) -> str:
    """One line, no request signatures or credentials (botocore messages can echo headers)."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:300]
