"""``meta_every``: the upper variables move every k-th step, W1 and W2 every step."""

import pytest
import torch

from lfm_core.errors import UsageError
from lfm_core.hypergradient import ENGINES
from lfm_dr.methods.base import DRContext
from lfm_dr.methods.lfm import DRProblem, LFMReweighting
from lfm_core.registries import MODELS

N_TRAIN, N_META, K = 40, 10, 3


def _method(seed=0, **options):
    g = torch.Generator().manual_seed(123)
    xm, ym = torch.randn(N_META, 3, 8, 8, generator=g), torch.randint(0, K, (N_META,), generator=g)
    meta_pos = {"i": 0}

    def next_meta():  # a fixed cycle of two meta batches
        lo = 5 * (meta_pos["i"] % 2)
        meta_pos["i"] += 1
        return xm[lo:lo + 5], ym[lo:lo + 5], torch.arange(lo, lo + 5)

    ctx = DRContext(
        model_fn=lambda: MODELS.create("resnet32", num_classes=K, width=2, blocks_per_stage=1),
        num_classes=K, class_counts=[N_TRAIN // K] * K, n_train=N_TRAIN, n_meta=N_META, lr=0.1,
        next_meta=next_meta, options={"encoder": "smallcnn", "pretrained": False, **options},
    )
    torch.manual_seed(seed)
    return LFMReweighting(ctx)


def _batches(n):
    g = torch.Generator().manual_seed(7)
    for step in range(n):
        idx = torch.randperm(N_TRAIN, generator=g)[:8]
        yield torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, K, (8,), generator=g), idx


def _state(method):
    tensors = [*method.w1.state_dict().values(), *method.w2.state_dict().values(),
               *method.encoder.state_dict().values(), method.b, method.r]
    return [t.detach().clone() for t in tensors]


def test_meta_every_one_is_the_plain_solver_step_bit_for_bit():
    plain, interval = _method(), _method(meta_every=1)
    for x, y, idx in _batches(3):
        # the behaviour before meta_every: one solver step per training step
        xm, ym, jm = plain.ctx.next_meta()
        plain.solver.step(DRProblem(plain.w1, plain.w2, plain.encoder, x, y, idx, xm, ym, jm, "dot", "none"))
        with torch.no_grad():
            plain.b.clamp_(min=0.0)
        interval.train_step(x, y, idx, 0)
    for a, b in zip(_state(plain), _state(interval)):
        assert torch.equal(a, b)


def test_meta_every_k_takes_the_hypergradient_on_every_kth_step_only(monkeypatch):
    calls = []

    def counted(engine):
        def run(*args, **kwargs):
            calls.append(len(seen))
            return engine(*args, **kwargs)

        return run

    for name, engine in list(ENGINES.items()):
        monkeypatch.setitem(ENGINES, name, counted(engine))
    method = _method(meta_every=3)
    seen = []
    for x, y, idx in _batches(7):
        before = _state(method)
        w1_before = [p.detach().clone() for p in method.w1.parameters()]
        w2_before = [p.detach().clone() for p in method.w2.parameters()]
        out = method.train_step(x, y, idx, 0)
        seen.append(out)
        assert out["finite"] == 1.0
        # W1 and W2 train every step
        assert not any(torch.equal(a, p) for a, p in zip(w1_before, method.w1.parameters()))
        assert not any(torch.equal(a, p) for a, p in zip(w2_before, method.w2.parameters()))
        upper_moved = not torch.equal(before[-2], method.b) or not torch.equal(before[-1], method.r)
        assert upper_moved == ((len(seen) - 1) % 3 == 0)
    assert calls == [0, 3, 6]
    assert method.extra_state()["steps_done"] == 7


def test_lower_step_takes_the_same_real_steps_as_a_step_without_upper_update():
    full, lower = _method(), _method()
    for x, y, idx in _batches(2):
        for m, update in ((full, "step"), (lower, "lower_step")):
            xm, ym, jm = m.ctx.next_meta()
            problem = DRProblem(m.w1, m.w2, m.encoder, x, y, idx, xm, ym, jm, "dot", "none")
            if update == "step":
                m.solver.step(problem, update_upper=False)
            else:
                m.solver.lower_step(problem)
    for a, b in zip(_state(full), _state(lower)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [0, -2, 1.5, "4"])
def test_bad_meta_every_is_a_usage_error(bad):
    with pytest.raises(UsageError, match="meta_every"):
        _method(meta_every=bad)
