"""The resumable loop of every trainer (the DR training, each stage of a NAS search, the
evaluation networks): epochs of steps from a saved position, a checkpoint after every epoch, a
graceful stop on SIGTERM/SIGUSR2/SIGINT (:mod:`lfm_core.stopping`: the position after the step
in progress is saved, then :class:`~lfm_core.errors.GracefulStop` is raised), a guard against
non-finite steps, the epochs' metrics records and progress.

The caller supplies what one step and one epoch's end do; the loop owns when they run. Tests
stop a loop at an exact moment through a :class:`Callback`; the environment's test stop
(``LFM_TEST_STOP_AT``, see :func:`env_test_stop`) is the one installed here for
subprocess tests.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from typing import Any, Callable

from lfm_core.errors import NonFiniteError
from lfm_core.stopping import stop_error, stop_on_signals, stop_requested


@dataclass(frozen=True)
class Position:
    """Before step ``step`` of epoch ``epoch``: where a checkpoint resumes."""

    epoch: int = 0
    step: int = 0


class Callback:
    """Hooks around the steps (no-ops here): ``on_step_start`` runs before a step's work,
    ``on_step_end`` after it, ``on_epoch_end`` after the epoch's last step, before its evaluation
    and checkpoint."""

    def on_step_start(self, epoch: int, step: int) -> None:
        pass

    def on_step_end(self, epoch: int, step: int) -> None:
        pass

    def on_epoch_end(self, epoch: int) -> None:
        pass


@dataclass(frozen=True)
class SignalAt(Callback):
    """Sends ``signum`` to this process at one moment of loop ``name``: the labels are
    ``<name>:<epoch>:<step>:mid`` (during a step), ``<name>:<epoch>:<step>:end`` (after it) and
    ``<name>:<epoch>:eval`` (during the epoch's end), e.g. ``dr:1:2:mid``."""

    name: str
    label: str
    signum: int = signal.SIGTERM

    def _at(self, label: str) -> None:
        if label == self.label:
            os.kill(os.getpid(), self.signum)

    def on_step_start(self, epoch: int, step: int) -> None:
        self._at(f"{self.name}:{epoch}:{step}:mid")

    def on_step_end(self, epoch: int, step: int) -> None:
        self._at(f"{self.name}:{epoch}:{step}:end")

    def on_epoch_end(self, epoch: int) -> None:
        self._at(f"{self.name}:{epoch}:eval")


def env_test_stop(name: str) -> tuple[Callback, ...]:
    """The test stop of subprocess tests: ``LFM_TEST_STOP_AT="<label>"`` (see :class:`SignalAt`)
    sends ``LFM_TEST_STOP_SIGNAL`` (default ``TERM``, e.g. ``KILL``) at that moment."""
    label = os.environ.get("LFM_TEST_STOP_AT")
    if not label:
        return ()
    return (SignalAt(name, label, getattr(signal, "SIG" + os.environ.get("LFM_TEST_STOP_SIGNAL", "TERM"))),)


@dataclass
class NonFiniteGuard:
    """Counts the non-finite (skipped) steps and raises :class:`NonFiniteError` at the
    ``limit``-th: of those in a row (``in_a_row``) or of all. ``advice(epoch)`` ends the error."""

    limit: int
    in_a_row: bool = False
    advice: Callable[[int], str] = lambda epoch: ""
    skipped: int = 0  # all the non-finite steps so far
    run: int = 0  # the non-finite steps in a row up to the last one

    def count(self, finite: bool, epoch: int, where: str, log: Callable[[str], None] | None) -> None:
        if finite:
            self.run = 0
            return
        self.skipped += 1
        self.run += 1
        if log is not None:
            log(f"non-finite loss or hypergradient {where}; step skipped")
        n = self.run if self.in_a_row else self.skipped
        if n >= self.limit:
            raise NonFiniteError(f"{n} non-finite steps{' in a row' if self.in_a_row else ''} {where}{self.advice(epoch)}")


def _signalled() -> bool:
    return stop_requested() is not None


def _nothing(epoch: int) -> None:
    pass


@dataclass(frozen=True)
class Loop:
    """One resumable loop. ``step(epoch, step)`` trains one step and returns False when it was
    non-finite (and skipped); ``end_epoch(epoch)`` evaluates and returns the epoch's metrics
    record for ``record``. ``save(position)`` writes the checkpoint; without it the loop neither
    checkpoints nor stops on signals (they keep their handlers). ``stop_asked`` polls the stop
    flag (launched processes agree on it); ``title`` names the loop in messages
    ("at <title> epoch 2 step 3"); ``name`` prefixes its test-stop labels."""

    name: str
    epochs: int
    steps: int
    step: Callable[[int, int], bool]
    end_epoch: Callable[[int], dict[str, Any]]
    begin_epoch: Callable[[int], None] = _nothing
    save: Callable[[Position], None] | None = None
    record: Callable[[dict[str, Any]], None] | None = None
    progress: Callable[[int, int], None] | None = None
    guard: NonFiniteGuard | None = None
    stop_asked: Callable[[], bool] = _signalled
    log: Callable[[str], None] | None = None
    title: str = ""
    callbacks: tuple[Callback, ...] = ()

    def where(self, epoch: int, step: int) -> str:
        return f"at {self.title + ' ' if self.title else ''}epoch {epoch} step {step}"


def run_loop(loop: Loop, start: Position = Position()) -> None:
    """Run ``loop`` from ``start`` to its last epoch's end (see :class:`Loop`)."""
    callbacks = loop.callbacks + env_test_stop(loop.name)
    with stop_on_signals() if loop.save is not None else contextlib.nullcontext():
        for epoch in range(start.epoch, loop.epochs):
            loop.begin_epoch(epoch)
            for step in range(start.step if epoch == start.epoch else 0, loop.steps):
                _stop_if_asked(loop, Position(epoch, step), save=True)  # a signal during the previous step lands here
                for cb in callbacks:
                    cb.on_step_start(epoch, step)
                finite = loop.step(epoch, step)
                if loop.guard is not None:
                    loop.guard.count(finite, epoch, loop.where(epoch, step), loop.log)
                if loop.progress is not None:
                    loop.progress(epoch * loop.steps + step + 1, loop.epochs * loop.steps)
                for cb in callbacks:
                    cb.on_step_end(epoch, step)
            for cb in callbacks:
                cb.on_epoch_end(epoch)
            record = loop.end_epoch(epoch)
            if loop.record is not None:
                loop.record(record)
            if loop.save is not None:
                loop.save(Position(epoch + 1, 0))
                _stop_if_asked(loop, Position(epoch + 1, 0), save=False)  # a signal during the epoch's end


def _stop_if_asked(loop: Loop, position: Position, save: bool) -> None:
    if loop.save is None or not loop.stop_asked():
        return
    if save:
        loop.save(position)
    where = loop.where(position.epoch, position.step)
    if loop.log is not None:
        loop.log(f"stopped by a signal {where}; checkpoint saved")
    raise stop_error(where)
