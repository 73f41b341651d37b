"""LFM-DR with a meta-update interval: training wall time against CE, accuracy against k = 1.

The Table VII cell "CIFAR-10 40%" of the ``cpu`` profile (scikit-learn digits at 16x16, 40% flip
noise, ResNet-32 width 8 with one block per stage, small CNN encoder, batch 50, 12 epochs, one
thread), trained with plain cross-entropy and with LFM-DR updating its upper variables (b, r, V)
every k-th step (``meta_every=k``; W1 and W2 train every step). Runs are interleaved seed by
seed (CE, then each k), so the machine's load hits all of one seed alike; the wall time of each
LFM-DR run is divided by the CE run of the same seed. On a shared machine the process's CPU time
(one thread) is the steadier measure and is reported beside the wall time. Test accuracy is
W2's after the last epoch.

    python benchmarks/meta_interval.py [--k 1,2,4,8] [--seeds 0,1,2] [--write benchmarks/results]
    # last line: one JSON object; --write DIR writes DIR/meta_interval.json after every run
    python benchmarks/meta_interval.py --k 4,8 --scale-upper-lr --baseline benchmarks/results/meta_interval.json \
        --write benchmarks/results      # upper lr x k; DIR/meta_interval_lr_scaled.json
    python benchmarks/meta_interval.py --meta-layers last --k 1,2,4 --baseline benchmarks/results/meta_interval.json \
        --write benchmarks/results      # classifier-only hypergradient; DIR/meta_interval_last_layer.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from lfm_core.io import atomic_write_text
from lfm_core.runner import RunContext
from lfm_dr.tables import Table7
from lfm_dr.methods.lfm import DEFAULTS
from lfm_dr.train import train_dr

PROFILE = "cpu"
COLUMN = "CIFAR-10 40%"  # digits on the cpu profile


def run_one(method: str, options: dict, seed: int, engine: str, epochs: int | None) -> dict:
    exp = Table7()
    opts = {"engine": engine, "epochs": epochs}
    row = {"ce": "Base Model", "lfm": "LFM-DR"}[method]
    cell = next(c for c in exp.cells(PROFILE, opts) if c.row == row and c.column == COLUMN)
    settings = exp.settings(cell, PROFILE, opts)  # what `lfm-bench run table7` records and trains
    with tempfile.TemporaryDirectory(prefix="lfm-meta-interval-") as tmp:
        ctx = RunContext(run_dir=Path(tmp), config={"settings": settings.record()}, device="cpu")
        splits = exp.build_splits(settings, seed, ctx)
        cfg = exp.train_config(settings, ctx)
        cfg.options.update(options)
        t, cpu = time.perf_counter(), time.process_time()
        metrics = train_dr(cfg, splits, seed, ctx)
        wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "test_acc": metrics["test_acc"], "epochs": cfg.epochs,
            "skipped_steps": metrics["skipped_steps"]}


def summarise(runs: list[dict], ks: list[int], baseline: list[dict] = ()) -> list[dict]:
    """Per k: wall time / CE (mean of per-seed ratios), accuracy mean and std, change vs k = 1
    (of the same seed; from ``baseline``, an earlier run's list, where this run has no k = 1)."""
    by_seed = {r["seed"]: r for r in runs if r["method"] == "ce"}
    base = {r["seed"]: r["test_acc"] for r in [*baseline, *runs]
            if r["method"] == "lfm" and r["meta_every"] == 1 and r.get("upper_lr_scale", 1) == 1
            and r.get("meta_layers") in (None, "all")}
    rows = []
    ce_accs = [r["test_acc"] for r in by_seed.values()]
    if ce_accs:
        rows.append({"method": "ce", "meta_every": None, "n": len(ce_accs), "wall_vs_ce": 1.0, "cpu_vs_ce": 1.0,
                     "wall_s": statistics.mean(r["wall_s"] for r in by_seed.values()),
                     "acc_mean": statistics.mean(ce_accs), "acc_std": _std(ce_accs)})
    for k in ks:
        mine = [r for r in runs if r["method"] == "lfm" and r["meta_every"] == k and r["seed"] in by_seed]
        if not mine:
            continue
        accs = [r["test_acc"] for r in mine]
        deltas = [r["test_acc"] - base[r["seed"]] for r in mine if r["seed"] in base]
        rows.append({
            "method": "lfm", "meta_every": k, "n": len(mine),
            "wall_s": statistics.mean(r["wall_s"] for r in mine),
            "wall_vs_ce": statistics.mean(r["wall_s"] / by_seed[r["seed"]]["wall_s"] for r in mine),
            "cpu_vs_ce": statistics.mean(r["cpu_s"] / by_seed[r["seed"]]["cpu_s"] for r in mine),
            "acc_mean": statistics.mean(accs), "acc_std": _std(accs),
            "acc_vs_k1": statistics.mean(deltas) if deltas else None,
        })
    return rows


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=_ints, default=[1, 2, 4, 8], help="meta-update intervals (default 1,2,4,8)")
    parser.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    parser.add_argument("--engine", default="exact")
    parser.add_argument("--epochs", type=int, default=None, help="override the cpu profile's 12 epochs")
    parser.add_argument("--scale-upper-lr", action="store_true",
                        help="multiply the upper learning rates (lr_b, lr_r, lr_v) by k: as many Adam steps' worth "
                             "of movement per epoch as k = 1 (writes meta_interval_lr_scaled.json)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="an earlier meta_interval.json whose k = 1 runs give the accuracy change")
    parser.add_argument("--meta-layers", choices=("all", "last"), default="all",
                        help="LFM-DR's meta_layers: 'last' lets the hypergradient through the classifier only "
                             "(writes meta_interval_last_layer.json)")
    parser.add_argument("--write", type=Path, default=None, help="folder for meta_interval.json")
    args = parser.parse_args(argv)
    baseline = json.loads(args.baseline.read_text())["runs"] if args.baseline else []
    out_name = "meta_interval_lr_scaled.json" if args.scale_upper_lr else "meta_interval.json"
    if args.meta_layers != "all":
        out_name = f"meta_interval_{args.meta_layers}_layer.json"
    torch.set_num_threads(1)
    runs: list[dict] = []
    result: dict = {}
    # untimed: the first training run in a process pays one-time costs (kernel and library set-up,
    # about a second of CPU here) that would otherwise land on the first seed's CE run
    run_one("lfm", {}, args.seeds[0], args.engine, 1)
    for seed in args.seeds:
        for method, k in [("ce", None)] + [("lfm", k) for k in args.k]:
            options = {} if k is None else {"meta_every": k, "meta_layers": args.meta_layers}
            scale = k if k is not None and args.scale_upper_lr else 1
            if scale != 1:
                options.update({key: DEFAULTS[key] * scale for key in ("lr_b", "lr_r", "lr_v")})
            run = {"method": method, "meta_every": k, "upper_lr_scale": scale, "seed": seed,
                   "meta_layers": args.meta_layers if k is not None else None,
                   **run_one(method, options, seed, args.engine, args.epochs)}
            runs.append(run)
            print(json.dumps(run), file=sys.stderr, flush=True)
            result = {
                "setup": f"table7 {COLUMN} on the {PROFILE} profile: digits 16x16, flip noise 40%, ResNet-32 width 8 "
                         f"(1 block per stage), smallcnn encoder, batch 50, {run['epochs']} epochs, engine "
                         f"{args.engine}, 1 thread; runs interleaved per seed; wall time includes per-epoch "
                         "evaluation" + ("; upper learning rates multiplied by k" if args.scale_upper_lr else "")
                         + f"; meta_layers {args.meta_layers}",
                "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}",
                "summary": summarise(runs, args.k, baseline), "runs": runs,
            }
            if args.write:
                args.write.mkdir(parents=True, exist_ok=True)
                atomic_write_text(args.write / out_name, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
