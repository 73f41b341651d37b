"""lfm_core's tri-level solver against Betty, TorchOpt and higher on one 3-level LFM-DR problem.

The problem (``three_level.py``): W1, W2 MLPs 64-256-10, encoder V 64-128-32, batch 100 + 100,
b per training example, r per validation example; SGD (momentum 0.9) for W1 and W2, Adam for
(b, V, r). Each library takes the same outer steps from the same initial state, interleaved in
one process. Before timing, each peer's first hypergradient is compared with lfm_core's exact
one (cosine and norm ratio for b, r and V): higher and TorchOpt differentiate the same one-step
unroll by reverse-over-reverse autodiff and must agree to rounding; Betty's ``darts`` method
omits the inner learning rates and evaluates at W' (cosine near 1, norm ratio 1/lr).
Times are medians of interleaved steps, by wall clock (``*_s``) and by the thread's CPU time
(``cpu_s``; on a shared CPU a longer step is descheduled more often, which wall time counts).

A peer that is not installed, or fails on the problem, is recorded as null with the reason.

    pip install --ignore-requires-python -c constraints.txt betty-ml torchopt higher
    python benchmarks/peers.py [--quick] [--json] [--write benchmarks/results]
    # --json: last line {"lfm_exact_s": ..., "lfm_fwd_s": ..., "betty_s": ..., "torchopt_s": ...,
    #                    "higher_s": ..., "cosines": {...}, ...} (seconds per step)
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import sys
from pathlib import Path

import torch

from lfm_core.io import atomic_write_text
from three_level import SETUP, betty_step_fn, build, compare, core_step_fn, higher_step_fn, interleaved_times, \
    plain_step_fn, torchopt_step_fn

PEERS = {"betty": "betty-ml", "torchopt": "torchopt", "higher": "higher"}
ENGINES = {"exact": "exact", "rev": "exact-reverse", "fd": "finite-difference", "fwd": "forward-difference"}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def peer_steps(d, models, device):
    """name -> (step function, its first hypergradient) or (None, reason)."""
    out = {}
    for name, dist in PEERS.items():
        if _version(dist) is None:
            out[name] = (None, f"not installed (pip install --ignore-requires-python -c constraints.txt {dist})")
            continue
        try:
            if name == "betty":
                first: dict = {}
                step = betty_step_fn(d, models, device, first)
                step()
                # Betty's module is UpperVars: its names are b, r, V.<name> like ours
                out[name] = (step, first)
            else:
                step = (torchopt_step_fn if name == "torchopt" else higher_step_fn)(d, models)
                out[name] = (step, step())
        except Exception as exc:  # a peer that cannot express the problem is a result, not a crash
            out[name] = (None, f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer timed steps (2 warm-up, 10 timed)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line last")
    parser.add_argument("--write", type=Path, default=None, help="folder for peers.json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=None)
    args = parser.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else (2 if args.quick else 5)
    repeat = args.repeat if args.repeat is not None else (10 if args.quick else 40)
    device = torch.device(args.device)
    d, models = build(device)

    core = {key: core_step_fn(engine, d, models) for key, engine in ENGINES.items()}
    reference = core["exact"]()  # the first step of each, from the same initial state
    for key in ("fd", "fwd"):
        core[key]()
    peers = peer_steps(d, models, device)
    cosines = {name: compare(grads, reference) for name, (step, grads) in peers.items() if step is not None}
    reasons = {name: why for name, (step, why) in peers.items() if step is None}

    names = ["plain", *(f"lfm_{k}" for k in core), *(n for n, (step, _) in peers.items() if step is not None)]
    fns = [plain_step_fn(d, models), *core.values(), *(step for step, _ in peers.values() if step is not None)]
    walls, cpus = interleaved_times(fns, device, warmup, repeat)
    seconds, cpu = dict(zip(names, walls)), dict(zip(names, cpus))

    def speedups(times):
        """lfm-core engine -> (fastest peer's time) / (engine's time), by the given clock."""
        peers_timed = {n: times[n] for n in PEERS if n in times}
        if not peers_timed:
            return None, None
        fastest = min(peers_timed, key=peers_timed.get)
        return fastest, {k: peers_timed[fastest] / times[f"lfm_{k}"] for k in core}

    fastest, speedup = speedups(seconds)
    fastest_cpu, speedup_cpu = speedups(cpu)
    result = {
        "lfm_exact_s": seconds["lfm_exact"], "lfm_fd_s": seconds["lfm_fd"], "lfm_fwd_s": seconds["lfm_fwd"],
        **{f"{n}_s": seconds.get(n) for n in PEERS},
        "plain_step_s": seconds["plain"],
        "cosines": cosines,
        "unavailable": reasons,
        "fastest_peer": fastest,
        "speedup_vs_fastest_peer": speedup,
        "ratios_to_plain": {n: s / seconds["plain"] for n, s in seconds.items()},
        # the same steps by the thread's CPU time (steadier than wall time on a shared CPU)
        "cpu_s": cpu if device.type == "cpu" else None,
        "fastest_peer_cpu": fastest_cpu if device.type == "cpu" else None,
        "speedup_vs_fastest_peer_cpu": speedup_cpu if device.type == "cpu" else None,
        "versions": {"torch": torch.__version__, **{n: _version(dist) for n, dist in PEERS.items()}},
        "device": str(device), "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s)",
        "setup": f"{SETUP}; median of {repeat} interleaved steps after {warmup}",
    }
    if args.write:
        args.write.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.write / "peers.json", json.dumps(result, indent=2) + "\n")
    for n, s in seconds.items():
        extra = ""
        if n in cosines:
            extra = "  cosine b/r/V " + " / ".join(f"{cosines[n][g]['cosine']:.5f}" for g in ("b", "r", "V"))
        print(f"{n:>10}: {1e3 * s:8.2f} ms/step wall {1e3 * cpu[n]:8.2f} ms CPU  {cpu[n] / cpu['plain']:6.1f}x plain "
              f"(CPU){extra}", file=sys.stderr)
    for n, why in reasons.items():
        print(f"{n:>10}: {why}", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
