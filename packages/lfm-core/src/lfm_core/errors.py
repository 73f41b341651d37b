"""User-facing errors: the CLI prints their message on one line, without a traceback."""


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


def check_choice(kind: str, value, choices) -> object:
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
