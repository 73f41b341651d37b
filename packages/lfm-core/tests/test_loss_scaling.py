"""fp16 autocast with a loss scaler: the solver's scaled hypergradient and its overflow handling."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lfm_core.solver import TriLevelSolver
from lfm_core.weighting import lfm_weights

N, D, K = 16, 8, 3


class Problem:
    def __init__(self, w1, w2, enc, x, y, xv, yv):
        self.w1, self.w2, self.enc, self.x, self.y, self.xv, self.yv = w1, w2, enc, x, y, xv, yv

    def loss1(self, w1, upper):
        return (upper["b"] * F.cross_entropy(functional_call(self.w1, w1, (self.x,)), self.y, reduction="none")).mean()

    def weights(self, w1, upper):
        u = F.cross_entropy(functional_call(self.w1, w1, (self.xv,)), self.yv, reduction="none")
        enc = {k[2:]: v for k, v in upper.items() if k.startswith("V.")}
        f_tr, f_val = functional_call(self.enc, enc, (self.x,)), functional_call(self.enc, enc, (self.xv,))
        return lfm_weights(f_tr, f_val, self.y, self.yv, u, upper["r"], "dot", "none")

    def loss2(self, w2, a, upper):
        return (a * F.cross_entropy(functional_call(self.w2, w2, (self.x,)), self.y, reduction="none")).mean()

    def loss3(self, w2, upper):
        return F.cross_entropy(functional_call(self.w2, w2, (self.xv,)), self.yv)


def setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    data = [torch.randn(N, D, generator=g), torch.randint(0, K, (N,), generator=g),
            torch.randn(N, D, generator=g), torch.randint(0, K, (N,), generator=g)]
    data[1][:4] = data[3][:4]
    torch.manual_seed(seed)
    nets = [nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, K)) for _ in range(2)]
    return nets, nn.Linear(D, 4), data


def run(engine, scaler=None, fp16=False, seed=0):
    (w1, w2), enc, data = setup(seed)
    upper = {"b": torch.ones(N, requires_grad=True), "r": torch.ones(N, requires_grad=True)}
    upper.update({f"V.{k}": p for k, p in enc.named_parameters()})
    opt1, opt2 = torch.optim.SGD(w1.parameters(), lr=0.3), torch.optim.SGD(w2.parameters(), lr=0.3)
    solver = TriLevelSolver(w1, w2, upper, opt1, opt2, torch.optim.SGD(list(upper.values()), lr=0.0),
                            engine=engine, modules=[enc], grad_scaler=scaler)
    w1_before = copy.deepcopy(w1.state_dict())
    with torch.autocast("cpu", dtype=torch.float16, enabled=fp16):
        stats = solver.step(Problem(w1, w2, enc, *data))
    return stats, w1, w1_before


def rel_err(a, b):
    return sum(float((a[k] - b[k]).norm() ** 2) for k in b) ** 0.5 / sum(float(b[k].norm() ** 2) for k in b) ** 0.5


def test_scaled_fp16_hypergradient_matches_float32():
    for engine in ("exact", "exact-reverse", "finite-difference"):
        ref, _, _ = run(engine)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        got, _, _ = run(engine, scaler, fp16=True)
        assert got.finite and scaler.get_scale() == 2.0**10  # no overflow: the scale is kept
        assert rel_err(got.grads, ref.grads) < 2e-2, engine  # fp16 forward passes, unscaled result


def test_exact_reverse_unscales_by_the_real_steps_scale():
    """The held gradients carry the real steps' loss scale, which ``update`` may change before
    the products: the hypergradient must not depend on it (float32, growth after one step)."""
    ref, _, _ = run("exact-reverse")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    got, _, _ = run("exact-reverse", scaler)
    assert scaler.get_scale() == 2.0**11  # the scale grew between the real steps and the products
    assert rel_err(got.grads, ref.grads) < 1e-6


@pytest.mark.parametrize("engine", ["exact", "exact-reverse"])
def test_overflowing_step_is_skipped_and_the_scale_lowered(engine):
    scaler = torch.amp.GradScaler("cpu", init_scale=1e38)  # float16 gradients overflow at once
    stats, w1, before = run(engine, scaler, fp16=True)
    assert not stats.finite
    for k, v in w1.state_dict().items():  # the W1 step was skipped, not applied with inf
        torch.testing.assert_close(v, before[k])
    assert scaler.get_scale() < 1e38
