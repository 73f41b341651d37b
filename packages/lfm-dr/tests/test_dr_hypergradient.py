"""The LFM-DR hypergradient (b, r, V through both unrolled steps) against brute-force central
differences of the whole one-step objective, on a tiny ResNet-32 with batch norm, in float64."""

import copy

import pytest
import torch

from lfm_core.encoders import create_encoder
from lfm_core.registries import MODELS
from lfm_core.runtime import default_dtype
from lfm_core.solver import TriLevelSolver, frozen_bn_stats, named_params
from lfm_dr.methods.lfm import DRProblem

LR1, LR2, N, M, K = 0.3, 0.4, 6, 5, 3


@pytest.fixture(autouse=True)
def float64():
    with default_dtype(torch.float64):
        yield


def setup(single: bool):
    torch.manual_seed(0)
    w1 = MODELS.create("resnet32", num_classes=K, width=2, blocks_per_stage=1)
    w2 = w1 if single else MODELS.create("resnet32", num_classes=K, width=2, blocks_per_stage=1)
    enc = create_encoder("smallcnn")
    g = torch.Generator().manual_seed(1)
    x, xm = torch.randn(N, 3, 8, 8, generator=g), torch.randn(M, 3, 8, 8, generator=g)
    y, ym = torch.randint(0, K, (N,), generator=g), torch.randint(0, K, (M,), generator=g)
    y[:3] = ym[:3]
    idx, jm = torch.tensor([4, 0, 7, 2, 9, 5]), torch.tensor([3, 1, 0, 4, 2])  # data-set indices
    upper = {"b": torch.rand(10, generator=g) + 0.5, "r": torch.rand(5, generator=g) + 0.5}
    upper.update({f"V.{k}": p.detach().clone() for k, p in enc.named_parameters()})
    return w1, w2, enc, (x, y, idx, xm, ym, jm), upper


def problem(w1, w2, enc, batch, head=None):
    return DRProblem(w1, w2, enc, *batch, similarity="dot", drop="none", head=head)


def objective(w1, w2, enc, batch, upper, single):
    """Validation loss of W2' after one plain SGD step of W1 (b-weighted) and of W2 (a-weighted)."""
    pr = problem(w1, w2, enc, batch)
    with frozen_bn_stats(w1, w2, enc):
        p1 = {k: v.detach().requires_grad_() for k, v in named_params(w1).items()}
        g1 = torch.autograd.grad(pr.loss1(p1, upper), list(p1.values()))
        w1n = {k: p1[k].detach() - LR1 * g for k, g in zip(p1, g1)}
        a = pr.weights(w1n, upper)
        p2 = {k: v.detach().requires_grad_() for k, v in (w1n if single else named_params(w2)).items()}
        g2 = torch.autograd.grad(pr.loss2(p2, a, upper), list(p2.values()))
        return float(pr.loss3({k: p2[k].detach() - LR2 * g for k, g in zip(p2, g2)}, upper))


def solver_grads(engine, w1, w2, enc, batch, upper, single):
    w1, enc = copy.deepcopy(w1), copy.deepcopy(enc)
    w2 = w1 if single else copy.deepcopy(w2)
    live = {k: v.clone().requires_grad_() for k, v in upper.items()}
    solver = TriLevelSolver(w1, w2, live, torch.optim.SGD(w1.parameters(), lr=LR1),
                            torch.optim.SGD(w2.parameters(), lr=LR2), torch.optim.SGD(live.values(), lr=0.0),
                            engine=engine, fd_eps=1e-5, modules=[enc], upper_reaches_batch_norm=single)
    return solver.step(problem(w1, w2, enc, batch)).grads


COORDS = [("b", 4), ("b", 7), ("b", 9), ("b", 1), ("r", 0), ("r", 3),
          ("V.features.0.weight", 5), ("V.features.8.weight", 40), ("V.features.9.weight", 3)]


@pytest.mark.parametrize("single", [False, True])
def test_dr_hypergradient_matches_brute_force(single):
    w1, w2, enc, batch, upper = setup(single)
    h = 1e-6
    for engine in ("exact", "exact-reverse", "finite-difference"):
        got = solver_grads(engine, w1, w2, enc, batch, upper, single)
        for name, i in COORDS:
            vals = []
            for sign in (1, -1):
                pert = {k: v.clone() for k, v in upper.items()}
                pert[name].view(-1)[i] += sign * h
                vals.append(objective(w1, w2, enc, batch, pert, single))
            ref = (vals[0] - vals[1]) / (2 * h)
            ours = float(got[name].view(-1)[i])
            if name == "b" and i == 1:  # example 1 is not in the batch: no gradient at all
                assert ref == 0 and ours == 0
                continue
            assert abs(ref) > 1e-9, (name, i)
            tol = 1e-4 if engine.startswith("exact") else 1e-3
            assert abs(ours - ref) <= tol * abs(ref) + 1e-10, (engine, name, i, ours, ref)


def objective_through(w1, w2, enc, batch, upper, upper0, single, keep):
    """The one-step objective when only the parameters in ``keep`` carry the dependence on the
    upper variables: every other entry of W1' and W2' is held at its value for ``upper0``."""
    def unrolled(up, held1=None, held2=None):
        pr = problem(w1, w2, enc, batch)
        with frozen_bn_stats(w1, w2, enc):
            p1 = {k: v.detach().requires_grad_() for k, v in named_params(w1).items()}
            g1 = torch.autograd.grad(pr.loss1(p1, up), list(p1.values()))
            w1n = {k: p1[k].detach() - LR1 * g for k, g in zip(p1, g1)}
            if held1 is not None:
                w1n = {k: v if k in keep else held1[k] for k, v in w1n.items()}
            a = pr.weights(w1n, up)
            p2 = {k: v.detach().requires_grad_() for k, v in (w1n if single else named_params(w2)).items()}
            g2 = torch.autograd.grad(pr.loss2(p2, a, up), list(p2.values()))
            w2n = {k: p2[k].detach() - LR2 * g for k, g in zip(p2, g2)}
            if held2 is not None:
                w2n = {k: v if k in keep else held2[k] for k, v in w2n.items()}
            return w1n, w2n, pr

    held1, held2, _ = unrolled(upper0)
    _, w2n, pr = unrolled(upper, held1, held2)
    return float(pr.loss3(w2n, upper))


@pytest.mark.parametrize("single", [False, True])
def test_layerwise_hypergradient_matches_brute_force_of_the_approximation(single):
    """``hyper_params`` (LFM-DR's ``meta_layers='last'``): the hypergradient of the objective in
    which only the classifier's entries of W1' and W2' depend on the upper variables."""
    from lfm_dr.methods.lfm import classifier_params

    w1, w2, enc, batch, upper = setup(single)
    keep = set(classifier_params(w1))
    assert keep == {"linear.weight", "linear.bias"}
    refs = {}
    for name, i in COORDS:
        if name == "b" and i == 1:
            continue
        vals = []
        for sign in (1, -1):
            pert = {k: v.clone() for k, v in upper.items()}
            pert[name].view(-1)[i] += sign * 1e-6
            vals.append(objective_through(w1, w2, enc, batch, pert, upper, single, keep))
        refs[name, i] = (vals[0] - vals[1]) / 2e-6
    runs = [(engine, tol, head) for engine, tol in (("exact", 1e-4), ("exact-reverse", 1e-4), ("finite-difference", 1e-3),
                                                    ("forward-difference", 1e-2)) for head in (None, "linear")]
    for engine, tol, head in runs:  # head: the products reuse the real steps' classifier inputs
        w1c, enc_c = copy.deepcopy(w1), copy.deepcopy(enc)
        w2c = w1c if single else copy.deepcopy(w2)
        live = {k: v.clone().requires_grad_() for k, v in upper.items()}
        solver = TriLevelSolver(w1c, w2c, live, torch.optim.SGD(w1c.parameters(), lr=LR1),
                                torch.optim.SGD(w2c.parameters(), lr=LR2), torch.optim.SGD(live.values(), lr=0.0),
                                engine=engine, fd_eps=1e-5, modules=[enc_c], upper_reaches_batch_norm=single,
                                hyper_params=keep)
        got = solver.step(problem(w1c, w2c, enc_c, batch, head)).grads
        for (name, i), ref in refs.items():
            ours = float(got[name].view(-1)[i])
            assert abs(ref) > 1e-9, (name, i)
            assert abs(ours - ref) <= tol * abs(ref) + 1e-10, (engine, head, name, i, ours, ref)
    full = solver_grads("exact", w1, w2, enc, batch, upper, single)
    # an approximation, not the full hypergradient
    assert not torch.allclose(got["b"], full["b"], rtol=1e-3)


def test_layerwise_hypergradient_with_every_parameter_is_the_full_one():
    w1, w2, enc, batch, upper = setup(False)
    every = [k for k, _ in w1.named_parameters()]
    full = solver_grads("exact", w1, w2, enc, batch, upper, False)
    w1c, w2c, enc_c = copy.deepcopy(w1), copy.deepcopy(w2), copy.deepcopy(enc)
    live = {k: v.clone().requires_grad_() for k, v in upper.items()}
    solver = TriLevelSolver(w1c, w2c, live, torch.optim.SGD(w1c.parameters(), lr=LR1),
                            torch.optim.SGD(w2c.parameters(), lr=LR2), torch.optim.SGD(live.values(), lr=0.0),
                            engine="exact", modules=[enc_c], upper_reaches_batch_norm=False, hyper_params=every)
    got = solver.step(problem(w1c, w2c, enc_c, batch)).grads
    for k in full:
        assert torch.equal(got[k], full[k]), k
    with pytest.raises(ValueError, match="nope"):
        TriLevelSolver(w1c, w2c, live, solver.opt1, solver.opt2, solver.upper_optimizer, hyper_params=["nope"])
