"""The resumable loop: a stop injected by a callback saves the position after the step in
progress, a run from that position does the remaining steps only, and the non-finite guard
counts and stops."""

import pytest

from lfm_core.errors import GracefulStop, NonFiniteError
from lfm_core.loop import Loop, NonFiniteGuard, Position, SignalAt, run_loop


def recording_loop(done: list, saved: list, **kw) -> Loop:
    def step(epoch: int, step: int) -> bool:
        done.append((epoch, step))
        return True

    return Loop(name="t", epochs=3, steps=4, step=step, end_epoch=lambda epoch: {"epoch": epoch},
                save=saved.append, **kw)


def test_a_callback_stop_saves_the_next_position_and_the_rerun_does_the_rest():
    done, saved, records = [], [], []
    with pytest.raises(GracefulStop, match="at epoch 1 step 3; rerun the same command to resume") as stopped:
        run_loop(recording_loop(done, saved, record=records.append, callbacks=(SignalAt("t", "t:1:2:mid"),)))
    assert stopped.value.exit_code == 143
    assert done[-1] == (1, 2) and saved == [Position(1, 0), Position(1, 3)] and records == [{"epoch": 0}]
    rest: list = []
    run_loop(recording_loop(rest, saved, record=records.append), saved[-1])
    assert done + rest == [(e, s) for e in range(3) for s in range(4)]
    assert records == [{"epoch": e} for e in range(3)] and saved[-1] == Position(3, 0)


def test_a_stop_during_the_epoch_end_resumes_at_the_next_epoch():
    done, saved = [], []
    with pytest.raises(GracefulStop, match="at epoch 1 step 0"):
        run_loop(recording_loop(done, saved, callbacks=(SignalAt("t", "t:0:eval"),)))
    assert saved == [Position(1, 0)] and done[-1] == (0, 3)


def test_the_guard_stops_at_its_limit_of_steps_in_a_row():
    logged = []
    guard = NonFiniteGuard(3, in_a_row=True, advice=lambda epoch: f" (epoch {epoch})")
    finite = iter([False, False, True, False, False, False])
    loop = Loop(name="t", epochs=2, steps=4, step=lambda e, s: next(finite), end_epoch=lambda epoch: {},
                guard=guard, log=logged.append)
    with pytest.raises(NonFiniteError, match=r"^3 non-finite steps in a row at epoch 1 step 1 \(epoch 1\)$"):
        run_loop(loop)
    assert guard.skipped == 5 and len(logged) == 5


def test_without_a_checkpoint_a_stop_request_is_not_polled():
    asked = []
    loop = Loop(name="t", epochs=1, steps=2, step=lambda e, s: True, end_epoch=lambda epoch: {},
                stop_asked=lambda: asked.append(1) or True)
    run_loop(loop)
    assert asked == []
