"""lfm_core's tri-level solver against Betty on the same 3-level LFM-DR problem, side by side.

W1, W2: 2-layer MLPs (64 -> 256 -> 10) on synthetic 64-dim data; batch 100 training and 100
validation examples; V: MLP encoder (64 -> 128 -> 32); b: one weight per training example
(1000), r: one coefficient per validation example (100). One outer step = SGD step of W1 on
the b-weighted loss, SGD step of W2 on the a-weighted loss, Adam step of (b, V, r) on W2's
validation loss. Reported: median seconds per step after warm-up, and a plain SGD step of the
MLP as the unit.

    pip install --ignore-requires-python -c constraints.txt betty-ml
    python benchmarks/betty_compare.py [--write benchmarks/results]   # last line: one JSON object
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lfm_core.solver import TriLevelSolver
from lfm_core.weighting import lfm_weights

D, K, N_TR, N_VAL, BATCH = 64, 10, 1000, 100, 100
LR1 = LR2 = 0.1  # SGD (momentum 0.9) of W1 and W2
LR_UP = 0.01  # Adam of (b, V, r), as in lfm-dr


# ---- the problem, written once; both solvers call these ------------------------------------
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
    def __init__(self):
        super().__init__()
        self.b, self.r = nn.Parameter(torch.ones(N_TR)), nn.Parameter(torch.ones(N_VAL))
        self.V = mlp(D, 128, 32)


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


def sgd(module, lr):
    return torch.optim.SGD(module.parameters(), lr=lr, momentum=0.9)


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
    upper = {"b": up.b, "r": up.r, **{f"V.{k}": p for k, p in up.V.named_parameters()}}
    solver = TriLevelSolver(w1, w2, upper, sgd(w1, LR1), sgd(w2, LR2), torch.optim.Adam(up.parameters(), lr=LR_UP),
                            engine=engine, modules=[up.V])
    problem = CoreProblem(w1, w2, up, d)
    return lambda: solver.step(problem).grads


# ---- Betty: W1 lowest, W2 middle, (b, V, r) top --------------------------------------------
def betty_step_fn(d, models, device, first_grads):
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
    p3 = Upper("upper", cfg, module=up, optimizer=torch.optim.Adam(up.parameters(), lr=LR_UP))
    # u2l: b enters W1's loss, (V, r) enter W2's loss; l2u: W1' enters W2's loss (through u), W2' the upper loss.
    # Upper's hypergradient paths (found by Betty): upper -> W2 -> W1 -> upper (b) and upper -> W2 -> upper (V, r).
    deps = {"u2l": {p3: [p1, p2]}, "l2u": {p1: [p2], p2: [p3]}}
    engine = Engine([p1, p2, p3], EngineConfig(strategy="cpu" if device.type == "cpu" else "gpu"),
                    dependencies=deps)
    engine.train()
    return engine.train_step


def interleaved_medians(fns, device, warmup, repeat):
    """Median seconds per call of each function, timed in turns (a busy machine's load hits all alike)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, ts in zip(fns, times):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            ts.append(time.perf_counter() - t)
    return [statistics.median(ts) for ts in times]


def cosine(a, b):
    return float(F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", type=Path, default=None, help="folder for betty.json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)
    try:
        import betty
    except ImportError:
        print("betty is not installed: pip install --ignore-requires-python -c constraints.txt betty-ml",
              file=sys.stderr)
        return 2
    device = torch.device(args.device)
    d, models = build(device)

    plain_net = copy.deepcopy(models[0])
    plain_opt = sgd(plain_net, LR1)

    def plain_step():
        plain_opt.zero_grad(set_to_none=True)
        F.cross_entropy(plain_net(d.x), d.y).backward()
        plain_opt.step()

    exact, fd = core_step_fn("exact", d, models), core_step_fn("finite-difference", d, models)
    fwd = core_step_fn("forward-difference", d, models)
    betty_grads: dict = {}
    betty_step = betty_step_fn(d, models, device, betty_grads)
    core_grads = exact()  # the first step of each (from the same initial state) gives the hypergradients
    betty_step()
    names = {"r": ["r"], "b": ["b"], "V": [k for k in betty_grads if k.startswith("V.")]}
    cos = {k: cosine(torch.cat([betty_grads[n].flatten() for n in ns]), torch.cat([core_grads[n].flatten() for n in ns]))
           for k, ns in names.items()}
    # Betty's "darts" is DARTS read as implicit differentiation: the best-response Jacobian of a level
    # is -d2 L/dw dlam, without the inner learning rate that the one-step unroll of lfm_core has, and it is
    # evaluated at the stepped weights W' instead of W. So Betty's hypergradient is lfm_core's scaled by
    # 1/lr2 for r and V, 1/(lr1 lr2) for b (path through both levels), up to that O(lr) shift; the cosines
    # stay near 1. Adam is invariant to a constant gradient scale (up to its eps), so with the same learning
    # rates both take nearly the same upper steps (b and r agree to a few % after 5-10 steps, then drift).
    scale = {k: float(betty_grads[k].norm() / core_grads[k].norm()) for k in ("r", "b")}

    plain_s, exact_s, fd_s, fwd_s, betty_s = interleaved_medians([plain_step, exact, fd, fwd, betty_step], device,
                                                                 args.warmup, args.repeat)
    result = {
        "plain_step_s": plain_s, "lfm_exact_step_s": exact_s, "lfm_fd_step_s": fd_s, "lfm_fwd_step_s": fwd_s,
        "betty_step_s": betty_s,
        "speedup_vs_betty_exact": betty_s / exact_s, "speedup_vs_betty_fd": betty_s / fd_s,
        "speedup_vs_betty_fwd": betty_s / fwd_s,
        "ratios": {"lfm_exact": exact_s / plain_s, "lfm_fd": fd_s / plain_s, "lfm_fwd": fwd_s / plain_s,
                   "betty": betty_s / plain_s},
        "cosine_r": cos["r"], "cosine_b": cos["b"], "cosine_V": cos["V"],
        "betty_grad_scale": {**scale, "expected_r": 1 / LR2, "expected_b": 1 / (LR1 * LR2)},
        "betty_version": betty.__version__, "torch": torch.__version__, "device": str(device),
        "threads": torch.get_num_threads(),
        "setup": f"MLP {D}-256-{K}, encoder {D}-128-32, batch {BATCH}+{BATCH}, b[{N_TR}], r[{N_VAL}], "
                 f"median of {args.repeat} steps after {args.warmup}",
    }
    if args.write:
        args.write.mkdir(parents=True, exist_ok=True)
        tmp = args.write / ".betty.json.tmp"
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(args.write / "betty.json")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
