"""The 3-level LFM-DR problem on small MLPs, written once, and one outer step of it in each library.

W1, W2: 2-layer MLPs (64 -> 256 -> 10) on synthetic 64-dim data; batch 100 training and 100
validation examples; V: MLP encoder (64 -> 128 -> 32); b: one weight per training example
(1000), r: one coefficient per validation example (100). One outer step = SGD step (momentum
0.9) of W1 on the b-weighted loss, SGD step of W2 on the a-weighted loss, Adam step of
(b, V, r) on W2's validation loss through both unrolled steps.

Every ``*_step_fn`` returns a function that takes one outer step (real updates of W1, W2 and
the upper variables included) and returns the hypergradient it applied, keyed ``b``, ``r``
and ``V.<name>`` (Betty's hands its gradients to a callback instead). Used by
``betty_compare.py`` and ``peers.py``.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lfm_core.solver import TriLevelSolver
from lfm_core.weighting import lfm_weights

D, K, N_TR, N_VAL, BATCH = 64, 10, 1000, 100, 100
LR1 = LR2 = 0.1  # SGD (momentum 0.9) of W1 and W2
MOMENTUM = 0.9
LR_UP = 0.01  # Adam of (b, V, r), as in lfm-dr
SETUP = (f"MLP {D}-256-{K}, encoder {D}-128-32, batch {BATCH}+{BATCH}, b[{N_TR}], r[{N_VAL}], SGD lr {LR1} "
         f"momentum {MOMENTUM} for W1/W2, Adam lr {LR_UP} for (b, V, r)")


# ---- the problem; every library calls these with its own callables f(x) -------------------
def ce(logits, y):
    return F.cross_entropy(logits, y, reduction="none")


def loss1(f1, b, d):
    return (b[d.idx] * ce(f1(d.x), d.y)).mean()


def weights(f1, enc, r, d):
    u = ce(f1(d.xv), d.yv)  # per-example validation loss of W1'
    feats = enc(torch.cat([d.x, d.xv]))
    return lfm_weights(feats[: len(d.x)], feats[len(d.x):], d.y, d.yv, u, r[d.jv])


def loss2(f2, a, d):
    return (a * ce(f2(d.x), d.y)).mean()


def loss3(f2, d):
    return F.cross_entropy(f2(d.xv), d.yv)


def mlp(i, h, o):
    return nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, o))


class UpperVars(nn.Module):
    def __init__(self, encoder: nn.Module | None = None, n_tr: int = N_TR, n_val: int = N_VAL):
        super().__init__()
        self.b, self.r = nn.Parameter(torch.ones(n_tr)), nn.Parameter(torch.ones(n_val))
        self.V = mlp(D, 128, 32) if encoder is None else encoder


def build(device):
    """Data and initial models; every solver gets deep copies of the same initial state."""
    g = torch.Generator().manual_seed(0)
    d = SimpleNamespace(x=torch.randn(BATCH, D, generator=g), y=torch.randint(0, K, (BATCH,), generator=g),
                        idx=torch.randperm(N_TR, generator=g)[:BATCH],
                        xv=torch.randn(BATCH, D, generator=g), yv=torch.randint(0, K, (BATCH,), generator=g),
                        jv=torch.arange(BATCH))
    d = SimpleNamespace(**{k: v.to(device) for k, v in vars(d).items()})
    torch.manual_seed(0)
    return d, (mlp(D, 256, K).to(device), mlp(D, 256, K).to(device), UpperVars().to(device))


# ---- the same problem on the real networks: ResNet-32 learners, ResNet-18 encoder V ----------
RESNET_SETUP = (f"ResNet-32 (width 16) learners, ResNet-18 encoder (random init, batch statistics), 32x32 "
                f"images, batch {BATCH}+{BATCH}, b[{N_TR}], r[{N_VAL}], SGD lr {LR1} momentum {MOMENTUM} for "
                f"W1/W2, Adam lr {LR_UP} for (b, V, r)")


def build_resnet(device, width: int = 16, encoder: str = "resnet18"):
    """Data and initial models of the ResNet problem (as ``build``; the networks of step_cost.py)."""
    from lfm_core.encoders import create_encoder
    from lfm_core.registries import MODELS

    g = torch.Generator().manual_seed(0)
    d = SimpleNamespace(x=torch.randn(BATCH, 3, 32, 32, generator=g), y=torch.randint(0, K, (BATCH,), generator=g),
                        idx=torch.randperm(N_TR, generator=g)[:BATCH],
                        xv=torch.randn(BATCH, 3, 32, 32, generator=g), yv=torch.randint(0, K, (BATCH,), generator=g),
                        jv=torch.arange(BATCH))
    d.y[: BATCH // 2] = d.yv[: BATCH // 2]  # shared labels: the class-match term of a is not all zero
    d = SimpleNamespace(**{k: v.to(device) for k, v in vars(d).items()})
    torch.manual_seed(0)
    nets = [MODELS.create("resnet32", num_classes=K, width=width).to(device) for _ in range(2)]
    return d, (*nets, UpperVars(create_encoder(encoder, pretrained=False)).to(device))


def sgd(module, lr):
    return torch.optim.SGD(module.parameters(), lr=lr, momentum=MOMENTUM)


def upper_adam(up):
    return torch.optim.Adam(up.parameters(), lr=LR_UP)


def upper_names(up):
    return {"b": up.b, "r": up.r, **{f"V.{k}": p for k, p in up.V.named_parameters()}}


def apply_upper(up, opt, grads):
    """The upper Adam step with a hypergradient computed outside the optimiser."""
    opt.zero_grad(set_to_none=True)
    for k, p in upper_names(up).items():
        p.grad = grads[k]
    opt.step()


def plain_step_fn(d, models):
    """One SGD step of an MLP on plain cross-entropy: the unit of cost."""
    net = copy.deepcopy(models[0])
    opt = sgd(net, LR1)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(d.x), d.y).backward()
        opt.step()

    return step


# ---- lfm_core ----------------------------------------------------------------------------
class CoreProblem:
    def __init__(self, w1, w2, up, d):
        self.w1, self.w2, self.V, self.d = w1, w2, up.V, d

    @staticmethod
    def _f(net, params):
        return lambda x: functional_call(net, params, (x,))

    def loss1(self, w1, upper):
        return loss1(self._f(self.w1, w1), upper["b"], self.d)

    def weights(self, w1, upper):
        enc = {k[2:]: v for k, v in upper.items() if k.startswith("V.")}
        return weights(self._f(self.w1, w1), self._f(self.V, enc), upper["r"], self.d)

    def loss2(self, w2, a, upper):
        return loss2(self._f(self.w2, w2), a, self.d)

    def loss3(self, w2, upper):
        return loss3(self._f(self.w2, w2), self.d)


def core_step_fn(engine, d, models):
    w1, w2, up = copy.deepcopy(models)
    # the upper variables only weight per-example losses: the JVP engine keeps fused batch norm
    solver = TriLevelSolver(w1, w2, upper_names(up), sgd(w1, LR1), sgd(w2, LR2), upper_adam(up),
                            engine=engine, modules=[up.V], upper_reaches_batch_norm=False)
    problem = CoreProblem(w1, w2, up, d)
    return lambda: solver.step(problem).grads


# ---- Betty: W1 lowest, W2 middle, (b, V, r) top --------------------------------------------
def betty_step_fn(d, models, device, first_grads):
    """Betty's engine step; the first hypergradient it applies lands in ``first_grads``."""
    from betty.configs import Config, EngineConfig
    from betty.engine import Engine
    from betty.logging.logger_base import get_logger
    from betty.problems import ImplicitProblem

    get_logger().setLevel(logging.WARNING)  # Betty logs to stdout; the last line must be our JSON

    class Fixed(ImplicitProblem):  # the same fixed batches as lfm_core
        def get_batch(self):
            return d

    class W1(Fixed):
        def training_step(self, d):
            return loss1(self.module, self.upper.module.b, d)

    class W2(Fixed):
        def training_step(self, d):
            up = self.upper.module
            return loss2(self.module, weights(self.w1.module, up.V, up.r, d), d)

    class Upper(Fixed):
        def training_step(self, d):
            return loss3(self.w2.module, d)

        def grad_callback(self):  # the hypergradient Betty hands to the upper optimiser
            if not first_grads:
                first_grads.update({k: p.grad.detach().clone() for k, p in self.module.named_parameters()})

    w1, w2, up = copy.deepcopy(models)
    cfg = Config(type="darts", unroll_steps=1)
    p1 = W1("w1", cfg, module=w1, optimizer=sgd(w1, LR1))
    p2 = W2("w2", cfg, module=w2, optimizer=sgd(w2, LR2))
    p3 = Upper("upper", cfg, module=up, optimizer=upper_adam(up))
    # u2l: b enters W1's loss, (V, r) enter W2's loss; l2u: W1' enters W2's loss (through u), W2' the upper loss.
    # Upper's hypergradient paths (found by Betty): upper -> W2 -> W1 -> upper (b) and upper -> W2 -> upper (V, r).
    deps = {"u2l": {p3: [p1, p2]}, "l2u": {p1: [p2], p2: [p3]}}
    engine = Engine([p1, p2, p3], EngineConfig(strategy="cpu" if device.type == "cpu" else "gpu"),
                    dependencies=deps)
    engine.train()
    return engine.train_step


# ---- higher: differentiable copies of both optimisers, one inner loop per outer step -------
def higher_step_fn(d, models):
    import higher

    w1, w2, up = copy.deepcopy(models)
    opt1, opt2, opt_up = sgd(w1, LR1), sgd(w2, LR2), upper_adam(up)
    names = upper_names(up)

    def write_back(net, opt, fnet, dopt):
        """The unrolled step is the real one: its weights and momentum buffers become the state."""
        with torch.no_grad():
            for i, (p, fp) in enumerate(zip(net.parameters(), fnet.fast_params)):
                p.copy_(fp)
                opt.state[p]["momentum_buffer"] = dopt.state[0][i]["momentum_buffer"].detach()

    def step():
        with higher.innerloop_ctx(w1, opt1, copy_initial_weights=True) as (f1, d1), \
                higher.innerloop_ctx(w2, opt2, copy_initial_weights=True) as (f2, d2):
            d1.step(loss1(f1, up.b, d))
            d2.step(loss2(f2, weights(f1, up.V, up.r, d), d))
            grads = dict(zip(names, torch.autograd.grad(loss3(f2, d), list(names.values()))))
            write_back(w1, opt1, f1, d1)
            write_back(w2, opt2, f2, d2)
        apply_upper(up, opt_up, grads)
        return grads

    return step


# ---- TorchOpt: functional SGD with differentiable (non-in-place) updates --------------------
def torchopt_step_fn(d, models):
    import optree
    import torchopt

    w1, w2, up = copy.deepcopy(models)
    opt_up = upper_adam(up)
    names = upper_names(up)
    nets = {"w1": w1, "w2": w2}
    params = {n: {k: p.detach() for k, p in net.named_parameters()} for n, net in nets.items()}
    inner = {"w1": torchopt.sgd(LR1, momentum=MOMENTUM), "w2": torchopt.sgd(LR2, momentum=MOMENTUM)}
    states = {n: inner[n].init(params[n]) for n in nets}

    def unrolled(n, loss_fn):
        """One differentiable step of network n from its current (detached) weights."""
        p = {k: v.requires_grad_() for k, v in params[n].items()}
        loss = loss_fn(lambda x: functional_call(nets[n], p, (x,)))
        grads = dict(zip(p, torch.autograd.grad(loss, list(p.values()), create_graph=True)))
        updates, state = inner[n].update(grads, states[n], inplace=False)
        return torchopt.apply_updates(p, updates, inplace=False), state

    def step():
        new1, s1 = unrolled("w1", lambda f: loss1(f, up.b, d))
        f1 = lambda x: functional_call(w1, new1, (x,))  # noqa: E731
        new2, s2 = unrolled("w2", lambda f: loss2(f, weights(f1, up.V, up.r, d), d))
        out = loss3(lambda x: functional_call(w2, new2, (x,)), d)
        grads = dict(zip(names, torch.autograd.grad(out, list(names.values()))))
        # the unrolled steps are the real ones: carry their values (not their graphs) on
        for n, new, state in (("w1", new1, s1), ("w2", new2, s2)):
            params[n] = {k: v.detach() for k, v in new.items()}
            states[n] = optree.tree_map(lambda t: t.detach() if torch.is_tensor(t) else t, state)
        apply_upper(up, opt_up, grads)
        return grads

    return step


# ---- timing and comparison ----------------------------------------------------------------
def interleaved_medians(fns, device, warmup, repeat):
    """Median seconds per call of each function, timed in turns (a busy machine's load hits all alike)."""
    return interleaved_times(fns, device, warmup, repeat)[0]


def interleaved_times(fns, device, warmup, repeat):
    """(wall, thread CPU) median seconds per call of each function, timed in turns. On a shared
    machine a longer call is descheduled more often, so wall medians overstate it; the calling
    thread's CPU time does not count the waits (on CPU, with one thread, it is the steadier one)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        for fn in fns:
            fn()
    walls, cpus = [[] for _ in fns], [[] for _ in fns]
    for _ in range(repeat):
        for fn, wall, cpu in zip(fns, walls, cpus):
            sync()
            t, c = time.perf_counter(), time.thread_time()
            fn()
            sync()
            wall.append(time.perf_counter() - t)
            cpu.append(time.thread_time() - c)
    return [statistics.median(ts) for ts in walls], [statistics.median(ts) for ts in cpus]


def cosine(a, b):
    """dot / (norm * norm) in float64 (F.cosine_similarity clamps each norm at eps = 1e-8, which
    reads cos ~ 0 for a group whose gradient is that small, as the ResNet-18 encoder's can be)."""
    a, b = a.flatten().double(), b.flatten().double()
    return float(a @ b / (a.norm() * b.norm()))


def compare(grads, reference):
    """Cosine, norm ratio and relative error ||g - ref|| / ||ref|| against the reference
    hypergradient, per group (b, r, all of V), in float64."""
    groups = {"b": ["b"], "r": ["r"], "V": [k for k in reference if k.startswith("V.")]}
    out = {}
    for g, keys in groups.items():
        mine = torch.cat([grads[k].flatten().double() for k in keys])
        ref = torch.cat([reference[k].flatten().double() for k in keys])
        out[g] = {"cosine": cosine(mine, ref), "norm_ratio": float(mine.norm() / ref.norm()),
                  "rel_err": float((mine - ref).norm() / ref.norm())}
    return out
