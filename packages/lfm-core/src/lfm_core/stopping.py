"""Graceful stop: SIGTERM (what batch schedulers send before killing), SIGUSR2 (submitit's
preemption and time-limit signal) and SIGINT (Ctrl-C) set a
flag that training loops poll at their safe points (step and epoch boundaries), where they save
the exact position and raise :class:`~lfm_core.errors.GracefulStop`. A second signal while the
loop is still finishing its step aborts at once (``KeyboardInterrupt``): the run then resumes
from its last checkpoint, as after SIGKILL.

The loops themselves are :func:`lfm_core.loop.run_loop`; tests stop one at an exact moment
through its callbacks (``LFM_TEST_STOP_AT="dr:1:2:mid"``: :func:`lfm_core.loop.env_test_stop`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

from lfm_core.errors import GracefulStop

# SIGUSR2: what submitit has Slurm send before preemption or the time limit (lfm_core.launch)
SIGNALS = (signal.SIGTERM, signal.SIGINT) + ((signal.SIGUSR2,) if hasattr(signal, "SIGUSR2") else ())
_requested: int | None = None  # the first signal received inside a stop_on_signals block


def _handler(signum, _frame) -> None:
    global _requested
    if _requested is not None:  # asked twice: do not wait for the step to finish
        raise KeyboardInterrupt(f"signal {signum}")
    _requested = signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block SIGTERM/SIGINT only set the stop flag; the previous handlers come back
    afterwards. Outside the main thread (signals cannot be handled there) this does nothing."""
    global _requested
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    outermost = all(h is not _handler for h in previous.values())
    if outermost:
        _requested = None
    for sig in SIGNALS:
        signal.signal(sig, _handler)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_requested() -> int | None:
    """The signal number that asked to stop, or None."""
    return _requested


def stop_error(where: str) -> GracefulStop:
    """The error to raise once the run's position is saved (``where``: "at epoch 2 step 3"):
    exit code 143 for SIGTERM, 130 for SIGINT."""
    return GracefulStop(f"stopped {where}; rerun the same command to resume", signum=_requested or signal.SIGTERM)


def stop_if_requested(where: str) -> None:
    if _requested is not None:
        raise stop_error(where)

