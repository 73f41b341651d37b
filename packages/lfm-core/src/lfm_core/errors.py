"""User-facing errors: the CLI prints their message on one line, without a traceback."""

import errno
from typing import Any, Iterable, TypeVar

T = TypeVar("T")


class LFMError(Exception):
    """An error caused by the user's input or environment, not by a bug. Exit code 1."""

    exit_code = 1


class UsageError(LFMError, ValueError):
    """A bad value given by the user (unknown name, rate out of range...). Exit code 2."""

    exit_code = 2


class DataNotFoundError(LFMError, FileNotFoundError):
    """Data or weights that must be on disk are missing; the message says where and how to get them."""


class CheckpointError(LFMError):
    """A checkpoint is corrupt, unsafe or does not match the run."""


class NonFiniteError(LFMError, FloatingPointError):
    """Training produced non-finite values too many times in a row."""


def check_choice(kind: str, value: T, choices: Iterable[Any]) -> T:
    """Return ``value`` if it is one of ``choices``; else raise one line naming the valid ones.

    The one check behind every "unknown X" error, with a "did you mean" for near misses.
    """
    import difflib

    choices = list(choices)
    if value in choices:
        return value
    texts = [f"{c:g}" if isinstance(c, float) else str(c) for c in choices]
    shown_value = f"{value:g}" if isinstance(value, float) else repr(value)
    # "did you mean" helps with names, not numbers
    close = difflib.get_close_matches(str(value), texts, n=3, cutoff=0.6) if isinstance(value, str) else []
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    shown = ", ".join(texts) if texts else "(none installed)"
    raise UsageError(f"unknown {kind} {shown_value}.{hint} Valid choices: {shown}.")


class GracefulStop(LFMError):
    """SIGTERM or SIGINT stopped a run at a safe point after saving its position; rerunning the
    same command resumes it. Exit code 128 + the signal number (143 SIGTERM, 130 SIGINT)."""

    def __init__(self, message: str, signum: int = 15):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


_OS_ERROR_HINTS = {
    errno.ENOSPC: "free some space or give another --results folder",
    errno.EDQUOT: "free some space or give another --results folder",
    errno.EROFS: "the file system is read-only: give a writable --results folder",
    errno.EACCES: "no permission: give a writable --results folder",
    errno.EPERM: "no permission: give a writable --results folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a file is in the way of a folder of that name",
    errno.ENAMETOOLONG: "the name is too long: give a shorter --results path",
}


def os_error_line(exc: OSError) -> str:
    """One line for an operating-system error: what failed, on which path, and what to do."""
    line = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename:
        line += f": {exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
    hint = _OS_ERROR_HINTS.get(exc.errno) if exc.errno is not None else None
    return line + (f" ({hint})" if hint else "")
