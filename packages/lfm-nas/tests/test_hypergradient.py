"""LFM-NAS and DARTS hypergradients against brute-force central differences (float64).

The brute force perturbs each upper-level element, reruns the whole one-step objective
(W1 step -> a -> W2 step -> validation loss of W2') with plain SGD steps, and differences.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lfm_core.runtime import default_dtype
from lfm_core.solver import frozen_bn_stats, named_params
from lfm_nas.darts import DartsArchitect
from lfm_nas.problem import ArchitectSettings, LFMArchitect, LFMNASProblem
from lfm_nas.spaces import Network, PSNetwork

OPS3 = ("max_pool_3x3", "skip_connect", "sep_conv_3x3")
K, N_TR, N_VAL_BATCH, N_VAL = 3, 4, 4, 6
LR = 0.3
SIDE = 8


@pytest.fixture(autouse=True)
def _float64():
    with default_dtype(torch.float64):
        yield


def data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x_tr = torch.randn(N_TR, 3, SIDE, SIDE, generator=g)
    x_val = torch.randn(N_VAL_BATCH, 3, SIDE, SIDE, generator=g)
    y_tr = torch.tensor([0, 1, 2, 1])
    y_val = torch.tensor([1, 0, 1, 2])
    idx = torch.tensor([4, 1, 5, 2])  # data-set indices into r (length N_VAL): r[0], r[3] unused
    return (x_tr, y_tr), (x_val, y_val, idx)


def supernet(num_classes=K, steps=2):
    """Tiny: 2 channels, 3 cells (normal, reduce, reduce), ``steps`` nodes per cell, 3 candidates."""
    return Network(C=2, num_classes=num_classes, layers=3, steps=steps, multiplier=steps, primitives=OPS3)


def make(variant, seed=0, similarity="dot", drop="none", bn_encoder=False, steps=2, ps_features="grad"):
    torch.manual_seed(seed)
    if variant == "ps":
        w1, w2, enc = PSNetwork(supernet(None, steps), K), None, None
    else:
        w1 = supernet(steps=steps)
        w2 = supernet(steps=steps) if variant == "two" else None
        layers = [nn.Conv2d(3, 2, 1)] + ([nn.BatchNorm2d(2)] if bn_encoder else []) + [nn.Tanh(),
                                                                                      nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        enc = nn.Sequential(*layers)
    g = torch.Generator().manual_seed(seed + 100)
    edges = sum(2 + i for i in range(steps))
    alphas = {k: 0.5 * torch.randn(edges, len(OPS3), generator=g) for k in ("normal", "reduce")}
    r0 = torch.rand(N_VAL, generator=g) + 0.5
    return dict(variant=variant, w1=w1, w2=w2, enc=enc, alphas=alphas, r0=r0, similarity=similarity, drop=drop,
                ps_features=ps_features)


def solver_grads(setup, engine="exact", fd_eps=1e-6, recompute_weights=True):
    s = copy.deepcopy(setup)
    settings = ArchitectSettings(variant=s["variant"], engine=engine, similarity=s["similarity"], drop=s["drop"],
                                 w_lr=LR, ps_features=s.get("ps_features", "grad"), w_momentum=0.0,
                                 w_weight_decay=0.0, grad_clip=None, fd_eps=fd_eps,
                                 recompute_weights=recompute_weights)
    arch = LFMArchitect(s["w1"], s["w2"], s["enc"], n_val=N_VAL, settings=settings, alphas=s["alphas"])
    with torch.no_grad():
        arch.upper["r"].copy_(s["r0"])
    upper0 = {k: v.detach().clone() for k, v in arch.upper.items()}
    b_tr, b_val = data()
    stats = arch.step(b_tr, b_val)
    return stats.grads, upper0, arch


def objective(setup, upper):
    """F(upper): validation loss of W2' after one plain SGD step of W1 and one of W2."""
    variant = setup["variant"]
    w1 = setup["w1"]
    w2 = w1 if variant in ("single", "ps") else setup["w2"]
    b_tr, b_val = data()
    problem = LFMNASProblem(w1, w2, setup["enc"], b_tr, b_val, variant=variant,
                            similarity=setup["similarity"], drop=setup["drop"],
                            ps_features=setup.get("ps_features", "grad"))
    mods = [m for m in (w1, w2, setup["enc"]) if m is not None]
    with frozen_bn_stats(*mods):
        p1 = {k: v.detach().requires_grad_() for k, v in named_params(w1).items()}
        g1 = torch.autograd.grad(problem.loss1(p1, upper), list(p1.values()), allow_unused=True)
        w1n = {k: p1[k].detach() - (0 if g is None else LR * g) for k, g in zip(p1, g1)}
        a = problem.weights(w1n, upper)
        start = w1n if variant in ("single", "ps") else {k: v.detach() for k, v in named_params(w2).items()}
        p2 = {k: v.detach().requires_grad_() for k, v in start.items()}
        g2 = torch.autograd.grad(problem.loss2(p2, a, upper), list(p2.values()), allow_unused=True)
        w2n = {k: p2[k].detach() - (0 if g is None else LR * g) for k, g in zip(p2, g2)}
        return float(problem.loss3(w2n, upper))


def brute_force(setup, upper0, h=1e-6):
    out = {}
    for name, val in upper0.items():
        grad = torch.zeros_like(val)
        for i in range(val.numel()):
            vals = []
            for sign in (1, -1):
                pert = {k: v.clone() for k, v in upper0.items()}
                pert[name].view(-1)[i] += sign * h
                vals.append(objective(setup, pert))
            grad.view(-1)[i] = (vals[0] - vals[1]) / (2 * h)
        out[name] = grad
    return out


def rel(a, b):
    return float((a - b).norm() / b.norm())


def total_rel(got, ref):
    num = sum(float((got[k] - ref[k]).norm() ** 2) for k in ref) ** 0.5
    return num / sum(float(ref[k].norm() ** 2) for k in ref) ** 0.5


@pytest.mark.parametrize("variant", ["two", "single", "ps"])
def test_lfm_exact_hypergradient_matches_brute_force(variant):
    setup = make(variant)
    got, upper0, _ = solver_grads(setup, "exact")
    ref = brute_force(setup, upper0)
    assert set(got) == set(ref)
    assert total_rel(got, ref) < 1e-4
    keys = ["alpha_normal", "alpha_reduce", "r"] + (["V.0.weight"] if variant != "ps" else [])
    for k in keys:
        assert float(ref[k].abs().max()) > 0, k  # every path is exercised
        assert rel(got[k], ref[k]) < 1e-4, k
    # r belongs to validation examples by data-set index: only the batch's entries move
    assert float(ref["r"][[0, 3]].abs().max()) == 0 and float(got["r"][[0, 3]].abs().max()) == 0
    assert float(got["r"][[1, 2, 4, 5]].abs().min()) > 0


@pytest.mark.parametrize("variant,ps_features", [("two", "grad"), ("single", "grad"), ("ps", "grad"), ("ps", "detached")])
def test_weights_rebuilt_one_pass_at_a_time_give_the_same_hypergradient(variant, ps_features):
    """recompute_weights (LFMArchitect's default: weights_vjp, one network graph at a time)
    against keeping the whole graph of the weights through the step."""
    setup = make(variant, ps_features=ps_features)
    rebuilt, _, _ = solver_grads(setup, "exact")
    kept, _, _ = solver_grads(setup, "exact", recompute_weights=False)
    assert set(rebuilt) == set(kept)
    assert total_rel(rebuilt, kept) < 1e-10


def test_ps_detached_features():
    """PS with the trunk's features taken as constants (cheaper): r, which does not reach the
    features, still gets the exact hypergradient; alphas get an approximate one."""
    setup = make("ps", ps_features="detached")
    got, upper0, _ = solver_grads(setup, "exact")
    r_ref = torch.zeros(N_VAL)
    for i in range(N_VAL):
        vals = []
        for sign in (1, -1):
            pert = {k: v.clone() for k, v in upper0.items()}
            pert["r"][i] += sign * 1e-6
            vals.append(objective(setup, pert))
        r_ref[i] = (vals[0] - vals[1]) / 2e-6
    assert rel(got["r"], r_ref) < 1e-4
    assert all(bool(torch.isfinite(g).all()) for g in got.values())
    assert float(got["alpha_normal"].abs().max()) > 0


@pytest.mark.parametrize("similarity,drop", [("cosine", "u"), ("l2", "x"), ("dot", "z")])
def test_lfm_exact_hypergradient_ablations(similarity, drop):
    setup = make("two", seed=1, similarity=similarity, drop=drop, bn_encoder=True)
    got, upper0, _ = solver_grads(setup, "exact")
    ref = brute_force(setup, upper0)
    assert total_rel(got, ref) < 1e-4


def test_lfm_engines_agree():
    # (ReLU/max-pool kinks: at DARTS' eps=0.01 central differences are only an approximation,
    # so the plumbing of the finite-difference engine is checked with a small eps)
    setup = make("two", seed=2)
    exact, _, _ = solver_grads(setup, "exact")
    fd, _, _ = solver_grads(setup, "finite-difference", fd_eps=1e-6)
    assert total_rel(fd, exact) < 1e-5
    fo, _, _ = solver_grads(setup, "first-order")
    assert float(fo["r"].abs().max()) == 0  # no direct path from r to the validation loss
    assert float(fo["alpha_normal"].abs().max()) > 0


@pytest.mark.parametrize("variant", ["two", "single", "ps"])
def test_lfm_exact_reverse_equals_exact(variant):
    """The graph-reuse engine (weights rebuilt one pass at a time, as LFM-NAS does) gives the JVP
    engine's hypergradient to rounding."""
    setup = make(variant, seed=2)
    exact, _, _ = solver_grads(setup, "exact")
    rev, _, _ = solver_grads(setup, "exact-reverse")
    assert total_rel(rev, exact) < 1e-10


def test_ps_shares_the_trunk_and_has_two_heads():
    setup = make("ps")
    _, _, arch = solver_grads(setup, "exact")
    m = arch.w1
    assert arch.w2 is m and arch.encoder is None
    assert not any(k.startswith("V.") for k in arch.upper)
    p1 = arch.opt1.param_groups[0]["params"]  # what W1's step trains
    p2 = arch.opt2.param_groups[0]["params"]  # what W2's step trains
    trunk = [p for p in m.trunk.parameters()]
    ptrs1, ptrs2 = {p.data_ptr() for p in p1}, {p.data_ptr() for p in p2}
    assert {p.data_ptr() for p in trunk} <= ptrs1 & ptrs2
    assert all(any(p is q for q in p1) and any(p is q for q in p2) for p in trunk)
    assert (ptrs1 ^ ptrs2) == {p.data_ptr() for p in (*m.head1.parameters(), *m.head2.parameters())}
    assert m.head1.weight is not m.head2.weight
    assert not torch.equal(m.head1.weight, m.head2.weight)
    l1, l2 = m.learner_parameters(1), m.learner_parameters(2)
    assert {k for k in l1 if k.startswith("trunk.")} == {k for k in l2 if k.startswith("trunk.")}
    assert all(l1[k] is l2[k] for k in l1 if k.startswith("trunk."))


@pytest.mark.parametrize("variant", ["two", "ps"])
def test_lfm_virtual_passes_leave_batchnorm_alone(variant):
    setup = make(variant, bn_encoder=True)
    ref = copy.deepcopy(setup)
    b_tr, _ = data()
    # reference: only the two real steps' forwards touch the buffers
    a = ref["alphas"]
    if variant == "ps":
        ref["w1"].train()
        ref["w1"](b_tr[0], a, head=1)
        # W2's real step runs at W1' (trunk updated): compare only the counters there
    else:
        for net in (ref["w1"], ref["w2"]):
            net.train()
            net(b_tr[0], a)
    enc_before = copy.deepcopy(setup["enc"]) if setup["enc"] is not None else None
    _, _, arch = solver_grads(setup, "exact")
    got_mods = [arch.w1] if variant == "ps" else [arch.w1, arch.w2]
    ref_mods = [ref["w1"]] if variant == "ps" else [ref["w1"], ref["w2"]]
    expected_count = 2 if variant == "ps" else 1  # PS: the shared trunk takes both real steps
    for got, want in zip(got_mods, ref_mods):
        for (name, b_got), (_, b_ref) in zip(got.named_buffers(), want.named_buffers()):
            if name.endswith("num_batches_tracked"):
                assert int(b_got) == expected_count, name
            elif variant != "ps":
                torch.testing.assert_close(b_got, b_ref, msg=name)
    if enc_before is not None:  # the encoder is only used in virtual passes
        for (name, b_got), (_, b_ref) in zip(arch.encoder.named_buffers(), enc_before.named_buffers()):
            torch.testing.assert_close(b_got, b_ref, msg=name)


# ------------------------------------------------------------------------------------
# DARTS
# ------------------------------------------------------------------------------------
def darts_objective(model, alphas, b_tr, b_val, lr):
    def loss(w, x, y):
        return F.cross_entropy(torch.func.functional_call(model, w, (x, alphas)), y)

    with frozen_bn_stats(model):
        w = {k: v.detach().requires_grad_() for k, v in named_params(model).items()}
        g = torch.autograd.grad(loss(w, *b_tr), list(w.values()))
        w2 = {k: w[k].detach() - lr * gk for k, gk in zip(w, g)}
        return float(loss(w2, *b_val[:2]))


def test_darts_second_order_matches_brute_force():
    torch.manual_seed(3)
    model = supernet()
    g = torch.Generator().manual_seed(3)
    alphas = {k: 0.5 * torch.randn(5, 3, generator=g) for k in ("normal", "reduce")}
    b_tr, b_val = data(3)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    arch = DartsArchitect(model, order="second", engine="exact", alphas=alphas)
    got = arch.hypergradient(*b_tr, *b_val[:2], lr=LR)
    ref = {}
    for kind in ("normal", "reduce"):
        grad = torch.zeros(5, 3)
        for i in range(grad.numel()):
            vals = []
            for sign in (1, -1):
                pert = {k: v.clone() for k, v in alphas.items()}
                pert[kind].view(-1)[i] += sign * 1e-6
                vals.append(darts_objective(model, pert, b_tr, b_val, LR))
            grad.view(-1)[i] = (vals[0] - vals[1]) / 2e-6
        ref[kind] = grad
    for kind in ("normal", "reduce"):
        assert float(ref[kind].abs().max()) > 0
        assert rel(got[kind], ref[kind]) < 1e-4, kind
    # the finite-difference engine (DARTS' own) is close, the first order is not the same thing
    fd = DartsArchitect(model, order="second", engine="finite-difference", alphas=alphas, fd_eps=1e-6)
    got_fd = fd.hypergradient(*b_tr, *b_val[:2], lr=LR)
    assert total_rel(got_fd, got) < 1e-5
    first = DartsArchitect(model, order="first", alphas=alphas).hypergradient(*b_tr, *b_val[:2])
    assert total_rel(first, got) > 1e-3
    # a step of the architect changes the alphas and leaves the batch-norm buffers alone
    arch.step(*b_tr, *b_val[:2], lr=LR)
    assert not torch.equal(arch.alphas["normal"], alphas["normal"])
    for k, v in model.named_buffers():
        assert torch.equal(v, buffers[k]), k


def test_darts_first_order_is_the_direct_gradient():
    model = supernet()
    alphas = {k: v.requires_grad_() for k, v in model.new_alphas(0.3).items()}
    b_tr, b_val = data(4)
    got = DartsArchitect(model, order="first", alphas=alphas).hypergradient(*b_tr, *b_val[:2])
    with frozen_bn_stats(model):
        ref = torch.autograd.grad(F.cross_entropy(model(b_val[0], alphas), b_val[1]), list(alphas.values()))
    for k, r in zip(("normal", "reduce"), ref):
        torch.testing.assert_close(got[k], r)


def test_lfm_exact_full_darts_cell_directional():
    """The real search cell (4 nodes, 14 edges, all 8 primitives): directional derivatives of the
    whole one-step objective along random directions agree with the exact hypergradient."""
    torch.manual_seed(5)
    w1 = Network(C=2, num_classes=K, layers=3)
    w2 = Network(C=2, num_classes=K, layers=3)
    enc = nn.Sequential(nn.Conv2d(3, 2, 1), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    g = torch.Generator().manual_seed(5)
    alphas = {k: 0.5 * torch.randn(14, 8, generator=g) for k in ("normal", "reduce")}
    setup = dict(variant="two", w1=w1, w2=w2, enc=enc, alphas=alphas, r0=torch.rand(N_VAL, generator=g) + 0.5,
                 similarity="dot", drop="none")
    got, upper0, _ = solver_grads(setup, "exact")
    groups = [["alpha_normal"], ["alpha_reduce"], ["r"], [k for k in upper0 if k.startswith("V.")], list(upper0)]
    h = 1e-7  # unit directions; small steps keep clear of ReLU / max-pool kinks
    for keys in groups:
        d = {k: torch.randn(upper0[k].shape, generator=g) if k in keys else torch.zeros_like(upper0[k]) for k in upper0}
        norm = sum(float(v.pow(2).sum()) for v in d.values()) ** 0.5
        d = {k: v / norm for k, v in d.items()}
        vals = []
        for sign in (1, -1):
            vals.append(objective(setup, {k: upper0[k] + sign * h * d[k] for k in upper0}))
        fd = (vals[0] - vals[1]) / (2 * h)
        exact = sum(float((got[k] * d[k]).sum()) for k in upper0)
        assert abs(fd) > 0, keys
        assert abs(exact - fd) / abs(fd) < 1e-4, (keys, exact, fd)


def test_a_plug_in_similarity_is_accepted_and_an_unknown_one_named(monkeypatch):
    """The similarity is checked against the registry, as in DR: a registered one works in NAS."""
    from lfm_core.errors import UsageError
    from lfm_core.registries import SIMILARITIES

    SIMILARITIES.names()  # the built-ins first, so the plug-in is added to a loaded registry
    monkeypatch.setitem(SIMILARITIES._items, "neg-dot", lambda f_tr, f_val: -(f_tr @ f_val.T))
    setup = make("two")
    setup["similarity"] = "neg-dot"
    grads, _, _ = solver_grads(setup)
    assert all(torch.isfinite(g).all() for g in grads.values())
    with pytest.raises(UsageError, match="cosine"):
        ArchitectSettings(similarity="cosin")
    with pytest.raises(UsageError, match="w_momentum"):
        LFMArchitect.from_space("darts", dict(C=2, layers=3, num_classes=3), variant="ps", n_val=4,
                                w_momentun=0.0)
