"""Bounded retries with exponential backoff and full jitter, for transient storage errors only.

Errors are classified by what the store said (the S3 error code and HTTP status behind s3fs's
translated exception), not by the exception's text alone: s3fs turns a 500 into
`OSError(EREMOTEIO, "We encountered an internal error...")` and a 412 into `OSError(EINVAL, ...)`.
"""

from __future__ import annotations

import functools
import logging
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from batchgen.errors import StorageError, StorageUnavailable
from batchgen.io.redact import redact
from batchgen.job.spec import StorageSpec

log = logging.getLogger("batchgen.io")
T = TypeVar("T")

# Conditional writes racing another one on the same key (S3 answers 409): retrying gives a clear 412 or
# success. Ours: botocore does not retry them, since without If-None-Match they do not happen.
_CONDITIONAL_CONFLICTS = frozenset({"ConditionalRequestConflict", "OperationAborted"})
# Codes that mean "these credentials may not do this", for a message that says so (not retried either way).
_DENIED_CODES = frozenset({
    "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
    "InvalidToken", "AccountProblem", "InvalidSecurity", "RequestTimeTooSkewed",
})
_FILE_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


@dataclass
class RetryPolicy:
    attempts: int = 8
    base: float = 0.5
    cap: float = 20.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    # Strings scrubbed from every message this policy writes (the configured secret key).
    secrets: tuple[str, ...] = field(default=(), repr=False)
    # Observed retries, for stats ("uploads were slow"): a plain counter, not a global.
    retried: int = 0

    @classmethod
    def from_spec(cls, spec: StorageSpec) -> RetryPolicy:
        secrets = (spec.secret.get_secret_value(),) if spec.secret is not None else ()
        return cls(attempts=max(1, spec.retries), base=spec.retry_base_seconds, cap=spec.retry_max_seconds, secrets=secrets)

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap, self.base * 2**attempt))

    def clean(self, exc: BaseException) -> str:
        """One line, no credentials (botocore messages can echo request details)."""
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return redact(text[:300], self.secrets)

    def backoff(self, what: str, exc: BaseException, attempt: int) -> None:
        """Sleep before retry `attempt + 1`, or raise StorageUnavailable if that was the last one."""
        if attempt + 1 >= self.attempts:
            raise StorageUnavailable(
                f"gave up after {self.attempts} attempts to {redact(what, self.secrets)}: {self.clean(exc)}",
                fix="committed parts are safe: rerun the same command to resume once the store is reachable "
                    "(if it persists, check storage.endpoint_url, storage.region and the network)",
            ) from exc
        self.retried += 1
        delay = self.delay(attempt)
        log.warning("transient error on %s (%s); retry %d/%d in %.1fs",
                    redact(what, self.secrets), self.clean(exc), attempt + 1, self.attempts - 1, delay)
        self.sleep(delay)


def error_code(exc: BaseException) -> tuple[str, int]:
    """(S3 error code, HTTP status) of the response behind `exc`, or ("", 0) if there was none."""
    for e in _chain(exc):
        response = getattr(e, "response", None)
        if isinstance(response, dict) and isinstance(response.get("Error"), dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            return str(response["Error"].get("Code", "")), int(status)
    return "", 0


def is_missing_bucket(exc: BaseException) -> bool:
    return error_code(exc)[0] == "NoSuchBucket" or "bucket does not exist" in str(exc)


@functools.cache
def _retryable() -> tuple[Any, tuple[type[BaseException], ...]]:
    """botocore's standard retry conditions (what the AWS SDKs retry), and the exception types that mean
    the network failed: Python's, aiohttp's (s3fs's transport) and those s3fs retries itself.
    Imported on first use: `batchgen status` on local files needs none of it."""
    from aiohttp import ClientConnectionError
    from botocore.retries.standard import OrRetryChecker, ThrottledRetryableChecker, TransientRetryableChecker
    from s3fs.core import S3_RETRYABLE_ERRORS

    return (OrRetryChecker([TransientRetryableChecker(), ThrottledRetryableChecker()]),
            (ConnectionError, TimeoutError, ClientConnectionError, *S3_RETRYABLE_ERRORS))


def is_transient(exc: BaseException) -> bool:
    from botocore.awsrequest import AWSResponse
    from botocore.retries.standard import RetryContext

    checker, network = _retryable()
    code, status = error_code(exc)
    if code or status:
        response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
        context = RetryContext(attempt_number=1, parsed_response=response,
                               http_response=AWSResponse("", status, {}, None) if status else None)
        return code in _CONDITIONAL_CONFLICTS or checker.is_retryable(context)
    if isinstance(exc, _FILE_ERRORS):
        return False
    return any(isinstance(e, network) or checker.is_retryable(RetryContext(attempt_number=1, caught_exception=e))
               for e in _chain(exc))


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and what caused it (s3fs and fsspec re-raise botocore's errors as OSError)."""
    seen: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and all(e is not s for s in seen):
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


def retry_transient(policy: RetryPolicy, what: str, fn: Callable[..., T], *args, **kwargs) -> T:
    """Call `fn`, retrying transient errors with backoff; any other error propagates unchanged."""
    for attempt in range(policy.attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - classified just below
            if not is_transient(e):
                raise
            policy.backoff(what, e, attempt)
    raise AssertionError("unreachable")


def with_retries(policy: RetryPolicy, what: str, fn: Callable[..., T], *args, **kwargs) -> T:
    """Call `fn`; retry transient errors; turn permanent ones into a StorageError naming `what`.

    FileNotFoundError (no such key) and FileExistsError (a conditional create lost) pass through:
    callers give them a meaning.
    """
    try:
        return retry_transient(policy, what, fn, *args, **kwargs)
    except StorageError:
        raise
    except Exception as e:  # noqa: BLE001 - mapped to what the caller can act on
        code, status = error_code(e)
        shown = redact(what, policy.secrets)
        if isinstance(e, FileNotFoundError) and is_missing_bucket(e):
            bucket = _bucket_of(what)
            raise StorageError(f"bucket {bucket!r} does not exist: cannot {shown}",
                               fix=f"create bucket {bucket!r}, or fix the path; check storage.endpoint_url and storage.region") from e
        if isinstance(e, (FileNotFoundError, FileExistsError)):
            raise
        if code == "PreconditionFailed" or status == 412:
            raise FileExistsError(f"already exists: {shown}") from e  # a store that answers 412 without s3fs's mapping
        if isinstance(e, PermissionError) or code in _DENIED_CODES or status == 403:
            raise StorageError(f"access denied ({code or status or type(e).__name__}): cannot {shown}",
                               fix="check the credentials (storage.key/secret, storage.profile or the AWS environment) "
                                   "and the bucket policy") from e
        raise StorageError(f"failed to {shown}: {policy.clean(e)}") from e


def _bucket_of(what: str) -> str:
    m = re.search(r"[a-z0-9]+://([^/\s]+)", what)
    return m.group(1) if m else "?"
