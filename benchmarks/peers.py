"""lfm_core's tri-level solver against Betty, TorchOpt and higher on one 3-level LFM-DR problem,
at two sizes.

The problem (``three_level.py``): W1 learns from the b-weighted loss, W2 from the a-weighted loss,
(b, V, r) descend W2's validation loss through both unrolled steps; SGD (momentum 0.9) for W1
and W2, Adam for (b, V, r). ``mlp``: W1, W2 MLPs 64-256-10, encoder V 64-128-32. ``resnet``:
ResNet-32 (width 16) learners, ResNet-18 encoder, 32x32 images (the networks of step_cost.py).
Batch 100 + 100, b per training example, r per validation example. Each library takes the
same outer steps from the same initial state, interleaved in one process. Before timing, each
first hypergradient is compared with lfm_core's exact one (cosine = dot / (norm * norm), norm
ratio and relative error for b, r and V, in float64): higher and TorchOpt differentiate the
same one-step unroll by reverse-over-reverse autodiff and must agree to rounding; Betty's
``darts`` method omits the inner learning rates and evaluates at W' (cosine near 1, norm
ratio 1/lr). Times are medians of interleaved steps, by wall clock (``*_s``) and by the
thread's CPU time (``cpu_s``; on a shared CPU a longer step is descheduled more often, which
wall time counts).

A peer that is not installed, or fails on the problem, is recorded as null with the reason.

    pip install -c constraints.txt torchopt higher
    pip install --ignore-requires-python -c constraints.txt betty-ml==0.2.1
    python benchmarks/peers.py [--quick] [--problem mlp|resnet|all] [--json] [--write benchmarks/results]
    # --json: last line {"mlp": {"lfm_exact_s": ..., "torchopt_s": ..., "cosines": {...}, ...},
    #                    "resnet": {...}, ...} (seconds per step)
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from lfm_core.io import atomic_write_text
from step_cost import replace_readme_block
from three_level import RESNET_SETUP, SETUP, betty_step_fn, build, build_resnet, compare, core_step_fn, \
    higher_step_fn, interleaved_times, plain_step_fn, torchopt_step_fn

PEERS = {"betty": "betty-ml", "torchopt": "torchopt", "higher": "higher"}
# the versions measured (benchmarks/README.md); the noxfile's bench_peers installs these
PINNED = {"betty-ml": "0.2.1", "torchopt": "0.7.3", "higher": "0.2.1"}
ENGINES = {"exact": "exact", "rev": "exact-reverse", "fd": "finite-difference", "fwd": "forward-difference"}
EXACT_KEYS = ("exact", "rev")
PROBLEMS = {"mlp": (build, SETUP, tuple(ENGINES)),
            # the difference engines' costs on the real networks are step_cost.py's
            "resnet": (build_resnet, RESNET_SETUP, EXACT_KEYS)}


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
            out[name] = (None, f"not installed (pip install --ignore-requires-python -c constraints.txt "
                               f"{dist}=={PINNED[dist]})")
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


def run_problem(name: str, device, warmup: int, repeat: int) -> dict:
    """Every solver on one problem: first hypergradients compared, then interleaved timings."""
    builder, setup, keys = PROBLEMS[name]
    d, models = builder(device)
    core = {key: core_step_fn(ENGINES[key], d, models) for key in keys}
    reference = core["exact"]()  # the first step of each, from the same initial state
    firsts = {f"lfm_{key}": core[key]() for key in keys if key != "exact"}
    peers = peer_steps(d, models, device)
    cosines = {n: compare(grads, reference) for n, grads in firsts.items()}
    cosines.update({n: compare(grads, reference) for n, (step, grads) in peers.items() if step is not None})
    reasons = {n: why for n, (step, why) in peers.items() if step is None}

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
    on_cpu = device.type == "cpu"
    return {
        **{f"lfm_{k}_s": seconds[f"lfm_{k}"] for k in core},
        **{f"{n}_s": seconds.get(n) for n in PEERS},
        "plain_step_s": seconds["plain"],
        "cosines": cosines,
        "unavailable": reasons,
        "fastest_peer": fastest,
        "speedup_vs_fastest_peer": speedup,
        "ratios_to_plain": {n: t / seconds["plain"] for n, t in seconds.items()},
        # the same steps by the thread's CPU time (steadier than wall time on a shared CPU)
        "cpu_s": cpu if on_cpu else None,
        "fastest_peer_cpu": fastest_cpu if on_cpu else None,
        "speedup_vs_fastest_peer_cpu": speedup_cpu if on_cpu else None,
        "setup": f"{setup}; median of {repeat} interleaved steps after {warmup}",
    }


def summary_markdown(result: dict) -> str:
    """The block ``--write`` puts into benchmarks/README.md: one table per problem."""
    clock = "thread CPU" if result["device"] == "cpu" else "wall-clock"
    lines = [f"Measured {result['date']} on {result['machine']}, torch {result['versions']['torch']}, "
             + ", ".join(f"{n} {v}" for n, v in result["versions"].items() if n != "torch" and v)
             + f"; load average {result['load_before']} before, {result['load_after']} after; "
             f"medians by {clock} time."]
    for name in PROBLEMS:
        r = result.get(name)
        if not r:
            continue
        times = r["cpu_s"] or {k[:-2]: v for k, v in r.items() if k.endswith("_s") and v is not None}
        fastest = r["fastest_peer_cpu"] or r["fastest_peer"]
        lines += ["", f"**{name}**: {r['setup']}.", "",
                  f"| | ms / step | x plain step | fastest peer ({fastest}) / this | "
                  "first hypergradient vs lfm exact: cosine b / r / V | rel. error b / r / V |",
                  "|---|---|---|---|---|---|"]
        for n, t in times.items():
            peer = f"{times[fastest] / t:.2f}x" if fastest in times and n != "plain" else ""
            c = r["cosines"].get(n)
            cos = " / ".join(f"{c[g]['cosine']:.6f}" for g in ("b", "r", "V")) if c else ""
            rel = " / ".join(f"{c[g]['rel_err']:.1e}" for g in ("b", "r", "V")) if c else ""
            label = "(reference)" if n == "lfm_exact" else cos
            lines.append(f"| {n} | {1e3 * t:.2f} | {t / times['plain']:.1f} | {peer} | {label} | {rel} |")
        for n, why in r["unavailable"].items():
            lines.append(f"| {n} | {why} | | | | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer timed steps")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line last")
    parser.add_argument("--write", type=Path, default=None, help="folder for peers.json (and the README block)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--problem", choices=(*PROBLEMS, "all"), default="all")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    result: dict = {"load_before": round(os.getloadavg()[0], 1)}
    for name in PROBLEMS if args.problem == "all" else (args.problem,):
        small = name == "mlp"
        warmup = args.warmup if args.warmup is not None else (2 if args.quick else 5) if small else 1
        repeat = args.repeat if args.repeat is not None else (10 if args.quick else 40) if small else \
            (3 if args.quick else 7)
        result[name] = run_problem(name, device, warmup, repeat)
        r = result[name]
        times = r["cpu_s"] or {k[:-2]: v for k, v in r.items() if k.endswith("_s") and v is not None}
        for n, t in times.items():
            extra = ""
            if n in r["cosines"]:
                extra = "  cosine b/r/V " + " / ".join(f"{r['cosines'][n][g]['cosine']:.6f}" for g in ("b", "r", "V"))
            print(f"{name:>6} {n:>10}: {1e3 * t:9.2f} ms/step  {t / times['plain']:6.1f}x plain{extra}",
                  file=sys.stderr)
        for n, why in r["unavailable"].items():
            print(f"{name:>6} {n:>10}: {why}", file=sys.stderr)
    result.update({
        "load_after": round(os.getloadavg()[0], 1),
        "versions": {"torch": torch.__version__, **{n: _version(dist) for n, dist in PEERS.items()}},
        "device": str(device), "machine": f"{platform.machine()} x{os.cpu_count()}, {torch.get_num_threads()} thread(s)",
        "date": time.strftime("%Y-%m-%d"),
    })
    if args.write:
        args.write.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.write / "peers.json", json.dumps(result, indent=2) + "\n")
        replace_readme_block(args.write.parent / "README.md", "peers", summary_markdown(result),
                             "### Latest `nox -s bench_peers`")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
