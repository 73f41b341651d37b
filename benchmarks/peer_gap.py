"""Where lfm-core's ``exact-reverse`` engine spends the time it loses to TorchOpt on the MLP problem
of ``peers.py``, phase by phase, with every step taken from the same states.

Both libraries run the same problem functions (``three_level.py``: loss1, weights, loss2, loss3)
and the same autodiff (two ``create_graph`` backwards and one meta backward); the script times,
by the thread's CPU time, each of those calls, each ``torch.optim`` ``step``/``zero_grad``, and the
rest of the step (the library's own bookkeeping: TorchOpt's functional SGD update; lfm-core's
real-step wrapper, cloned leaves, finiteness checks, statistics). Steps are timed from fresh
copies of the initial state in rounds of ``--steps`` (the two trajectories agree to 1e-4 for about
20 steps, and the step's cost depends on the state: subnormal numbers grow as the MLP memorises
its fixed batch), interleaved step by step, medians over rounds 2.. .

    python benchmarks/peer_gap.py [--rounds 8] [--steps 10] [--write benchmarks/results]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

import three_level as T
from lfm_core.io import atomic_write_text

PHASES = ("loss1", "weights", "loss2", "loss3")


def _timer(acc: dict, name: str, fn):
    def timed(*args, **kwargs):
        start = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            acc[name] += time.thread_time() - start
    return timed


def measure(rounds: int, steps: int) -> dict:
    acc: dict[str, float] = collections.defaultdict(float)
    for name in PHASES:  # the shared problem functions: both libraries call these module globals
        setattr(T, name, _timer(acc, f"problem.{name}", getattr(T, name)))
    grad = torch.autograd.grad
    torch.autograd.grad = lambda *a, **k: _timer(  # type: ignore[assignment]
        acc, "autograd.grad (create_graph)" if k.get("create_graph") else "autograd.grad", grad)(*a, **k)
    for cls in (torch.optim.SGD, torch.optim.Adam):
        cls.step = _timer(acc, f"{cls.__name__}.step", cls.step)  # type: ignore[method-assign]
        cls.zero_grad = _timer(acc, f"{cls.__name__}.zero_grad", cls.zero_grad)  # type: ignore[method-assign]
    d, models = T.build(torch.device("cpu"))
    makers = {"lfm_rev": lambda: T.core_step_fn("exact-reverse", d, models),
              "torchopt": lambda: T.torchopt_step_fn(d, models)}
    samples: dict[str, dict[str, list[float]]] = {k: collections.defaultdict(list) for k in makers}
    for r in range(rounds + 1):  # round 0 warms up
        fns = {k: make() for k, make in makers.items()}
        for _ in range(steps):
            for name, fn in fns.items():
                acc.clear()
                start = time.thread_time()
                fn()
                total = time.thread_time() - start
                if r:
                    samples[name]["total"].append(total)
                    samples[name]["rest"].append(total - sum(acc.values()))
                    for phase, t in acc.items():
                        samples[name][phase].append(t)
    torch.autograd.grad = grad
    return {lib: {phase: statistics.median(v) for phase, v in s.items()} for lib, s in samples.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--write", type=Path, default=None, help="folder for peer_gap.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    load = round(os.getloadavg()[0], 1)
    med = measure(args.rounds, args.steps)
    phases = sorted(set(med["lfm_rev"]) | set(med["torchopt"]), key=lambda p: (p in ("rest", "total"), p))
    print(f"{'phase (ms / step)':32s} {'lfm_rev':>9s} {'torchopt':>9s} {'difference':>10s}")
    for p in phases:
        a, b = med["lfm_rev"].get(p, 0.0), med["torchopt"].get(p, 0.0)
        print(f"{p:32s} {1e3 * a:9.3f} {1e3 * b:9.3f} {1e3 * (a - b):10.3f}")
    print(f"torchopt / lfm_rev: {med['torchopt']['total'] / med['lfm_rev']['total']:.3f}")
    if args.write:
        args.write.mkdir(parents=True, exist_ok=True)
        out = {"setup": f"{T.SETUP}; {args.rounds} rounds of {args.steps} steps from the initial state, "
                        "interleaved; medians by thread CPU time", "seconds": med,
               "torch": torch.__version__, "load_before": load, "load_after": round(os.getloadavg()[0], 1),
               "date": time.strftime("%Y-%m-%d")}
        atomic_write_text(args.write / "peer_gap.json", json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
