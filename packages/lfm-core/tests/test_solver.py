"""The hypergradient engines against brute-force central differences of the whole step."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lfm_core.runtime import default_dtype
from lfm_core.solver import TriLevelSolver, frozen_bn_stats, named_params
from lfm_core.weighting import lfm_weights

N_TR, N_VAL, D, K = 6, 5, 4, 3


@pytest.fixture(autouse=True)
def float64():
    """The brute-force checks need float64; restore the default so other tests are unaffected."""
    with default_dtype(torch.float64):
        yield


class Net(nn.Module):
    def __init__(self, bn: bool):
        super().__init__()
        self.fc1 = nn.Linear(D, 5)
        self.bn = nn.BatchNorm1d(5) if bn else nn.Identity()
        self.fc2 = nn.Linear(5, K)

    def forward(self, x, alpha):
        # alpha enters both before the batch norm and at the output, like an architecture weight
        return self.fc2(torch.tanh(self.bn(self.fc1(x) * (1 + alpha)))) * (1 + alpha)


class TinyProblem:
    """b weights W1's loss; alpha (an 'architecture' scalar) enters every network; V, r weight W2."""

    def __init__(self, w1, w2, enc, data, drop="none", similarity="dot"):
        self.w1, self.w2, self.enc = w1, w2, enc
        self.x_tr, self.y_tr, self.x_val, self.y_val = data
        self.drop, self.similarity = drop, similarity

    def _enc_params(self, upper):
        return {k[2:]: v for k, v in upper.items() if k.startswith("V.")}

    def loss1(self, w1, upper):
        out = functional_call(self.w1, w1, (self.x_tr, upper["alpha"]))
        return (upper["b"] * F.cross_entropy(out, self.y_tr, reduction="none")).mean()

    def weights(self, w1, upper):
        u = F.cross_entropy(functional_call(self.w1, w1, (self.x_val, upper["alpha"])), self.y_val, reduction="none")
        enc = self._enc_params(upper)
        f_tr = functional_call(self.enc, enc, (self.x_tr,))
        f_val = functional_call(self.enc, enc, (self.x_val,))
        return lfm_weights(f_tr, f_val, self.y_tr, self.y_val, u, upper["r"], self.similarity, self.drop)

    def loss2(self, w2, a, upper):
        out = functional_call(self.w2, w2, (self.x_tr, upper["alpha"]))
        return (a * F.cross_entropy(out, self.y_tr, reduction="none")).mean()

    def loss3(self, w2, upper):
        out = functional_call(self.w2, w2, (self.x_val, upper["alpha"]))
        return F.cross_entropy(out, self.y_val)


def make(seed=0, bn=True, single=False, drop="none", similarity="dot"):
    g = torch.Generator().manual_seed(seed)
    data = (torch.randn(N_TR, D, generator=g), torch.randint(0, K, (N_TR,), generator=g),
            torch.randn(N_VAL, D, generator=g), torch.randint(0, K, (N_VAL,), generator=g))
    data[1][:3] = data[3][:3]  # make sure labels overlap so z is not all zero
    torch.manual_seed(seed)
    w1 = Net(bn)
    w2 = w1 if single else Net(bn)
    enc = nn.Linear(D, 3)
    upper = {"b": torch.rand(N_TR, generator=g) + 0.5, "r": torch.rand(N_VAL, generator=g) + 0.5,
             "alpha": torch.tensor(0.3)}
    upper.update({f"V.{k}": p.detach().clone() for k, p in enc.named_parameters()})
    return w1, w2, enc, upper, data, drop, similarity


def solver_grads(engine, w1, w2, enc, upper, data, drop, similarity, momentum=0.0, **solver_kw):
    w1, enc = copy.deepcopy(w1), copy.deepcopy(enc)
    w2 = w1 if w2 is None else copy.deepcopy(w2)
    upper = {k: v.clone().requires_grad_() for k, v in upper.items()}
    opt1 = torch.optim.SGD(w1.parameters(), lr=0.5, momentum=momentum)
    opt2 = torch.optim.SGD(w2.parameters(), lr=0.7, momentum=momentum)
    up = torch.optim.SGD(upper.values(), lr=0.0)
    solver = TriLevelSolver(w1, w2, upper, opt1, opt2, up, engine=engine, fd_eps=1e-4, modules=[enc], **solver_kw)
    problem = TinyProblem(w1, w2, enc, data, drop, similarity)
    stats = solver.step(problem)
    return stats.grads, (w1, w2)


def objective(w1, w2, enc, upper, data, drop, similarity):
    """F(upper): the validation loss of W2' after one plain SGD step of each learner."""
    single = w2 is None
    problem = TinyProblem(w1, w1 if single else w2, enc, data, drop, similarity)
    with frozen_bn_stats(w1, enc, *( [] if single else [w2])):
        p1 = {k: v.detach().requires_grad_() for k, v in named_params(w1).items()}
        g1 = torch.autograd.grad(problem.loss1(p1, upper), list(p1.values()))
        w1n = {k: p1[k].detach() - 0.5 * g for k, g in zip(p1, g1)}
        a = problem.weights(w1n, upper)
        start = w1n if single else named_params(w2)
        p2 = {k: v.detach().requires_grad_() for k, v in start.items()}
        g2 = torch.autograd.grad(problem.loss2(p2, a, upper), list(p2.values()), create_graph=False)
        w2n = {k: p2[k].detach() - 0.7 * g for k, g in zip(p2, g2)}
        if single:
            # W2' depends on W1' through its starting point: rebuild with a differentiable path
            w2n = {k: w1n[k] - 0.7 * g for k, g in zip(p2, g2)}
        return problem.loss3(w2n, upper)


def brute_force(w1, w2, enc, upper, data, drop, similarity, h=1e-6):
    out = {}
    for name, val in upper.items():
        grad = torch.zeros_like(val)
        flat = grad.view(-1)
        for i in range(val.numel()):
            vals = []
            for sign in (1, -1):
                pert = {k: v.clone() for k, v in upper.items()}
                pert[name].view(-1)[i] += sign * h
                vals.append(float(objective(w1, w2, enc, pert, data, drop, similarity)))
            flat[i] = (vals[0] - vals[1]) / (2 * h)
        out[name] = grad
    return out


def rel_err(a, b):
    num = sum(float((a[k] - b[k]).norm() ** 2) for k in a) ** 0.5
    den = sum(float(b[k].norm() ** 2) for k in b) ** 0.5
    return num / den


EXACT = ["exact", "exact-reverse"]


@pytest.mark.parametrize("engine", EXACT)
@pytest.mark.parametrize("bn", [False, True])
def test_exact_matches_brute_force(bn, engine):
    w1, w2, enc, upper, data, drop, sim = make(bn=bn)
    ref = brute_force(w1, w2, enc, upper, data, drop, sim)
    got, _ = solver_grads(engine, w1, w2, enc, upper, data, drop, sim)
    assert rel_err(got, ref) < 1e-4
    for k in ("b", "r", "alpha", "V.weight"):
        assert float(ref[k].abs().max()) > 0, k  # every path is exercised
        assert float((got[k] - ref[k]).norm() / ref[k].norm()) < 1e-4, k


@pytest.mark.parametrize("engine", EXACT)
@pytest.mark.parametrize("bn", [False, True])
def test_exact_matches_brute_force_single_network(bn, engine):
    w1, _, enc, upper, data, drop, sim = make(bn=bn, single=True)
    ref = brute_force(w1, None, enc, upper, data, drop, sim)
    got, _ = solver_grads(engine, w1, None, enc, upper, data, drop, sim)
    assert rel_err(got, ref) < 1e-4
    for k in ("b", "r", "alpha", "V.weight"):
        assert float(ref[k].abs().max()) > 0, k


@pytest.mark.parametrize("similarity", ["cosine", "l2"])
@pytest.mark.parametrize("drop", ["x", "u", "z"])
def test_exact_matches_brute_force_variants(similarity, drop):
    w1, w2, enc, upper, data, _, _ = make(seed=1, bn=False, drop=drop, similarity=similarity)
    ref = brute_force(w1, w2, enc, upper, data, drop, similarity)
    got, _ = solver_grads("exact", w1, w2, enc, upper, data, drop, similarity)
    assert rel_err(got, ref) < 1e-4


@pytest.mark.parametrize("single", [False, True])
def test_exact_reverse_equals_exact_over_consecutive_steps(single):
    """The graph-reuse engine gives the JVP engine's hypergradients to rounding, step after step
    (momentum, batch norm, Adam on the upper variables), and takes the same real steps."""
    w1, w2, enc, upper, data, drop, sim = make(bn=True, single=single)
    runs = {}
    for engine in EXACT:
        n1, n2, e = copy.deepcopy(w1), None, copy.deepcopy(enc)
        n2 = n1 if single else copy.deepcopy(w2)
        up = {k: v.clone().requires_grad_() for k, v in upper.items()}
        opt1 = torch.optim.SGD(n1.parameters(), lr=0.3, momentum=0.9, weight_decay=5e-4)
        opt2 = opt1 if single else torch.optim.SGD(n2.parameters(), lr=0.4, momentum=0.9, weight_decay=5e-4)
        solver = TriLevelSolver(n1, n2, up, opt1, opt2, torch.optim.Adam(up.values(), lr=0.05), engine=engine,
                                modules=[e])
        problem = TinyProblem(n1, n2, e, data, drop, sim)
        runs[engine] = ([solver.step(problem) for _ in range(3)], n2)
    (ref, net_ref), (got, net_got) = runs["exact"], runs["exact-reverse"]
    for s_ref, s_got in zip(ref, got):
        assert rel_err(s_got.grads, s_ref.grads) < 1e-12
        assert (s_got.loss1, s_got.loss2) == (s_ref.loss1, s_ref.loss2)  # the same real steps
        assert abs(s_got.loss3 - s_ref.loss3) < 1e-12
    for (k, a), b in zip(net_ref.state_dict().items(), net_got.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12, msg=k)


@pytest.mark.parametrize("similarity", ["cosine", "l2"])
def test_exact_reverse_equals_exact_variants(similarity):
    w1, w2, enc, upper, data, _, _ = make(seed=1, bn=False, drop="z", similarity=similarity)
    ref, _ = solver_grads("exact", w1, w2, enc, upper, data, "z", similarity)
    got, _ = solver_grads("exact-reverse", w1, w2, enc, upper, data, "z", similarity)
    assert rel_err(got, ref) < 1e-12


def test_momentum_does_not_change_the_hypergradient_at_first_step():
    w1, w2, enc, upper, data, drop, sim = make(bn=False)
    plain, _ = solver_grads("exact", w1, w2, enc, upper, data, drop, sim)
    mom, _ = solver_grads("exact", w1, w2, enc, upper, data, drop, sim, momentum=0.9)
    assert rel_err(mom, plain) < 1e-10


def test_finite_difference_engine_close_to_exact():
    w1, w2, enc, upper, data, drop, sim = make(bn=True)
    exact, _ = solver_grads("exact", w1, w2, enc, upper, data, drop, sim)
    fd, _ = solver_grads("finite-difference", w1, w2, enc, upper, data, drop, sim)
    assert rel_err(fd, exact) < 1e-5


@pytest.mark.parametrize("single", [False, True])
def test_forward_difference_engine_close_to_brute_force(single):
    """One-sided differences (base from the real step) agree to O(eps) with the whole-step truth."""
    w1, w2, enc, upper, data, drop, sim = make(bn=True, single=single)
    ref = brute_force(w1, None if single else w2, enc, upper, data, drop, sim)
    fwd, _ = solver_grads("forward-difference", w1, None if single else w2, enc, upper, data, drop, sim)
    central, _ = solver_grads("finite-difference", w1, None if single else w2, enc, upper, data, drop, sim)
    assert rel_err(fwd, ref) < 1e-3
    # truncation error O(eps) (eps = 1e-4 here) against O(eps^2): worse than central, not by luck
    assert rel_err(central, ref) < rel_err(fwd, ref)


def test_forward_difference_reuses_the_real_steps_gradient(monkeypatch):
    """The base gradient comes from the real steps: one evaluation per product, same result."""
    import lfm_core.hypergradient.forward as forward_mod
    import lfm_core.hypergradient.products as products_mod

    w1, w2, enc, upper, data, drop, sim = make(bn=True)
    calls = []
    original = products_mod._grad_lam
    monkeypatch.setattr(products_mod, "_grad_lam", lambda *a: calls.append(a[-1]) or original(*a))
    reused, _ = solver_grads("forward-difference", w1, w2, enc, upper, data, drop, sim)
    assert len(calls) == 2 and all(step != 0 for step in calls)
    calls.clear()
    # under autocast the real step's values are low precision: the base is recomputed in float32
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=True):
        solver_grads("forward-difference", w1, w2, enc, upper, data, drop, sim)
    assert sorted(step != 0 for step in calls) == [False, False, True, True]
    # and the base from the real step equals a recomputed one
    fresh = {}
    monkeypatch.setattr(forward_mod, "keeps_base", lambda w: False)
    fresh, _ = solver_grads("forward-difference", w1, w2, enc, upper, data, drop, sim)
    assert rel_err(reused, fresh) < 1e-10


@pytest.mark.parametrize("engine", EXACT)
@pytest.mark.parametrize("single", [False, True])
def test_recomputed_weights_give_the_same_hypergradient(single, engine):
    w1, w2, enc, upper, data, drop, sim = make(bn=True, single=single)
    w2 = None if single else w2
    kept, (w1a, w2a) = solver_grads("exact", w1, w2, enc, upper, data, drop, sim)
    again, (w1b, w2b) = solver_grads(engine, w1, w2, enc, upper, data, drop, sim, recompute_weights=True)
    assert rel_err(again, kept) < 1e-12
    for net_a, net_b in ((w1a, w1b), (w2a, w2b)):  # same real steps, batch-norm buffers included
        for (k, ta), tb in zip(net_a.state_dict().items(), net_b.state_dict().values()):
            torch.testing.assert_close(ta, tb, msg=k)


def test_first_order_keeps_only_direct_terms():
    w1, w2, enc, upper, data, drop, sim = make(bn=True)
    fo, (w1n, w2n) = solver_grads("first-order", w1, w2, enc, upper, data, drop, sim)
    # the direct term: d loss3(W2', upper) / d upper with W2' held fixed
    problem = TinyProblem(w1n, w2n, enc, data, drop, sim)
    up = {k: v.clone().requires_grad_() for k, v in upper.items()}
    with frozen_bn_stats(w1n, w2n, enc):
        loss = problem.loss3(named_params(w2n), up)
    direct = torch.autograd.grad(loss, list(up.values()), allow_unused=True)
    for (k, g) in zip(up, direct):
        expected = torch.zeros_like(up[k]) if g is None else g
        torch.testing.assert_close(fo[k], expected)
    assert float(fo["alpha"].abs()) > 0
    assert float(fo["b"].abs().max()) == 0 and float(fo["r"].abs().max()) == 0


@pytest.mark.parametrize("engine", EXACT)
def test_virtual_passes_leave_batchnorm_buffers_alone(engine):
    w1, w2, enc, upper, data, drop, sim = make(bn=True)
    w1c, w2c = copy.deepcopy(w1), copy.deepcopy(w2)
    # reference: only the two real training steps touch the buffers
    for net in (w1c, w2c):
        net.train()
        net(data[0], upper["alpha"])
    _, (w1n, w2n) = solver_grads(engine, w1, w2, enc, upper, data, drop, sim)
    for ref, got in ((w1c, w1n), (w2c, w2n)):
        torch.testing.assert_close(got.bn.running_mean, ref.bn.running_mean)
        torch.testing.assert_close(got.bn.running_var, ref.bn.running_var)
        assert int(got.bn.num_batches_tracked) == 1


ALL_ENGINES = ["exact", "exact-reverse", "finite-difference", "forward-difference", "first-order"]


@pytest.mark.parametrize("engine", ALL_ENGINES)
def test_an_engine_function_is_what_the_solver_runs(engine):
    """ENGINES[engine] on a hand-built Setup gives, bit for bit, the hypergradient of a solver
    built with that name, and no other engine gives it (so a solver running the wrong engine
    fails); the exact engines also match brute-force central differences."""
    from lfm_core.hypergradient import ENGINES
    from lfm_core.hypergradient.steps import RealStep, Setup

    assert sorted(ENGINES) == sorted(ALL_ENGINES)
    w1, w2, enc, upper, data, drop, sim = make(bn=True)
    via_solver = {name: solver_grads(name, w1, w2, enc, upper, data, drop, sim)[0] for name in ENGINES}
    ref = brute_force(w1, w2, enc, upper, data, drop, sim) if engine in EXACT else None
    w1, w2, enc = copy.deepcopy(w1), copy.deepcopy(w2), copy.deepcopy(enc)
    upper = {k: v.clone().requires_grad_() for k, v in upper.items()}
    setup = Setup(w1, w2, upper, torch.optim.SGD(w1.parameters(), lr=0.5), torch.optim.SGD(w2.parameters(), lr=0.7),
                  RealStep(None, None, None), bn_layers=(w1.bn, w2.bn), hyper_params=None, recompute_weights=False,
                  plain_bn=True, fd_eps=1e-4)
    direct = ENGINES[engine](setup, TinyProblem(w1, w2, enc, data, drop, sim)).grads
    assert set(direct) == set(upper)
    for name, grads in via_solver.items():
        same = all(torch.equal(direct[k], grads[k]) for k in direct)
        assert same == (name == engine), name
    if ref is not None:
        assert rel_err(direct, ref) < 1e-4


def test_the_forward_differences_base_leaves_the_real_steps_alone():
    """Keeping grad_lam of the real steps (forward differences) changes none of their values."""
    from lfm_core.hypergradient.forward import unroll

    runs = []
    for keep in (False, True):
        w1, w2, enc, upper, data, drop, sim = make(bn=True)
        upper = {k: v.clone().requires_grad_() for k, v in upper.items()}
        solver = TriLevelSolver(w1, w2, upper, torch.optim.SGD(w1.parameters(), lr=0.5, momentum=0.9),
                                torch.optim.SGD(w2.parameters(), lr=0.7, momentum=0.9),
                                torch.optim.SGD(upper.values(), lr=0.0), engine="forward-difference", modules=[enc])
        u = unroll(solver.setup, TinyProblem(w1, w2, enc, data, drop, sim), keep_base=keep)
        assert (u.base1 is not None) == keep and (u.base2 is not None) == keep
        runs.append([u.loss1, u.loss2, u.loss3, u.a, *w1.state_dict().values(), *w2.state_dict().values()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_an_unknown_engine_names_the_valid_ones():
    w1, w2, enc, upper, *_ = make()
    with pytest.raises(ValueError, match="exact-reverse"):
        TriLevelSolver(w1, w2, upper, torch.optim.SGD(w1.parameters(), lr=0.1),
                       torch.optim.SGD(w2.parameters(), lr=0.1), torch.optim.SGD(upper.values(), lr=0.1),
                       engine="exakt")
