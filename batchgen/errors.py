"""Domain errors. The library raises these; only the CLI turns them into messages and exit codes."""

from __future__ import annotations

# Exit codes, documented in the README. 75 is sysexits' EX_TEMPFAIL: "try again later".
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_JOB = 2
EXIT_INTERRUPTED = 75


class BatchgenError(Exception):
    """A failure a user can act on: what was wrong, where, and how to fix it."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None):
        self.message = message
        self.where = where
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text


class SpecError(BatchgenError):
    """The job file or an override is invalid."""

    exit_code = EXIT_BAD_JOB


class InputError(BatchgenError):
    """The input cannot be read or lacks what the job needs."""

    exit_code = EXIT_BAD_JOB


class OutputError(BatchgenError):
    """The output location cannot be written, or holds another job's results."""

    exit_code = EXIT_BAD_JOB


class StorageError(BatchgenError):
    """A permanent object-store failure (access denied, bucket missing)."""

    exit_code = EXIT_FAILED


class StorageUnavailable(StorageError):
    """The store kept failing with transient errors (5xx, throttling, resets, timeouts) through every retry.

    Committed parts are whole objects, so nothing committed is at risk: this is "try again later"
    (exit 75), and rerunning the same command resumes.
    """

    exit_code = EXIT_INTERRUPTED


class Interrupted(BatchgenError):
    """The job stopped on a signal after committing what was finished; rerun to resume."""

    exit_code = EXIT_INTERRUPTED
