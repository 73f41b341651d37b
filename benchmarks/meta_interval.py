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
from lfm_core.report import seed_std
from lfm_core.runner import RunContext
from lfm_dr.tables import Table7
from lfm_dr.methods.lfm import DEFAULTS
from lfm_dr.train import train_dr

PROFILE = "cpu"
COLUMN = "CIFAR-10 40%"  # digits on the cpu profile


ROWS = {"ce": "Base Model", "lfm": "LFM-DR", "lfm_plus": "LFM-DR+ (ours)"}


def run_one(method: str, options: dict, seed: int, engine: str, epochs: int | None,
            standin: str = "digits") -> dict:
    exp = Table7()
    opts = {"engine": engine, "epochs": epochs, "standin": standin}
    row = ROWS[method]
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


def summarise(runs: list[dict], ks: list[int], baseline: list[dict] = (), layers: list[str] = ("all",)) -> list[dict]:
    """Per (meta_layers, k): wall time / CE (mean of per-seed ratios), accuracy mean and std, change
    vs the full method (k = 1, every layer, of the same seed; from ``baseline``, an earlier run's
    list, where this run has none)."""
    by_seed = {r["seed"]: r for r in runs if r["method"] == "ce"}
    base = {r["seed"]: r["test_acc"] for r in [*baseline, *runs]
            if r["method"] != "ce" and r["meta_every"] == 1 and r.get("upper_lr_scale", 1) == 1
            and r.get("meta_layers") in (None, "all")}
    rows = []
    ce_accs = [r["test_acc"] for r in by_seed.values()]
    if ce_accs:
        rows.append({"method": "ce", "meta_every": None, "n": len(ce_accs), "wall_vs_ce": 1.0, "cpu_vs_ce": 1.0,
                     "wall_s": statistics.mean(r["wall_s"] for r in by_seed.values()),
                     "acc_mean": statistics.mean(ce_accs), "acc_std": seed_std(ce_accs)})
    for layer in layers:
        rows.extend(_summary_rows(runs, ks, layer, by_seed, base))
    return rows


def _summary_rows(runs: list[dict], ks: list[int], layer: str, by_seed: dict, base: dict) -> list[dict]:
    rows = []
    for k in ks:
        mine = [r for r in runs if r["method"] != "ce" and r["meta_every"] == k and r["seed"] in by_seed
                and r.get("meta_layers", "all") == layer]
        if not mine:
            continue
        accs = [r["test_acc"] for r in mine]
        deltas = [r["test_acc"] - base[r["seed"]] for r in mine if r["seed"] in base]
        rows.append({
            "method": mine[0]["method"], "meta_layers": layer, "meta_every": k, "n": len(mine),
            "wall_s": statistics.mean(r["wall_s"] for r in mine),
            "wall_vs_ce": statistics.mean(r["wall_s"] / by_seed[r["seed"]]["wall_s"] for r in mine),
            "cpu_vs_ce": statistics.mean(r["cpu_s"] / by_seed[r["seed"]]["cpu_s"] for r in mine),
            "acc_mean": statistics.mean(accs), "acc_std": seed_std(accs),
            "acc_vs_k1": statistics.mean(deltas) if deltas else None,
        })
    return rows


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
    parser.add_argument("--meta-layers", default="all",
                        help="LFM-DR's meta_layers, comma-separated among all, last: 'last' lets the hypergradient "
                             "through the classifier only (alone: writes meta_interval_last_layer.json)")
    parser.add_argument("--method", choices=("lfm", "lfm_plus"), default="lfm",
                        help="the Table VII row: LFM-DR (paper) or LFM-DR+ (ours)")
    parser.add_argument("--standin", choices=("digits", "photo_patches"), default="digits",
                        help="the cpu profile's embedded data set")
    parser.add_argument("--write", type=Path, default=None, help="folder for meta_interval.json")
    args = parser.parse_args(argv)
    baseline = json.loads(args.baseline.read_text())["runs"] if args.baseline else []
    layers = [v for v in args.meta_layers.split(",") if v]
    if not layers or set(layers) - {"all", "last"}:
        parser.error(f"bad --meta-layers {args.meta_layers!r}: choose among all, last (comma-separated)")
    out_name = "meta_interval_lr_scaled.json" if args.scale_upper_lr else "meta_interval.json"
    if layers != ["all"]:
        out_name = f"meta_interval_{'_'.join(layers)}_layer.json"
    if args.method != "lfm" or args.standin != "digits":  # the defaults keep their files' names
        out_name = out_name.replace(".json", f"_{args.method}_{args.standin}.json")
    torch.set_num_threads(1)
    runs: list[dict] = []
    result: dict = {}
    # untimed: the first training run in a process pays one-time costs (kernel and library set-up,
    # about a second of CPU here) that would otherwise land on the first seed's CE run
    run_one(args.method, {}, args.seeds[0], args.engine, 1, args.standin)
    for seed in args.seeds:
        for method, k, layer in [("ce", None, None)] + [(args.method, k, m) for m in layers for k in args.k]:
            options = {} if k is None else {"meta_every": k, "meta_layers": layer}
            scale = k if k is not None and args.scale_upper_lr else 1
            if scale != 1:
                options.update({key: DEFAULTS[key] * scale for key in ("lr_b", "lr_r", "lr_v")})
            run = {"method": method, "meta_every": k, "upper_lr_scale": scale, "seed": seed,
                   "meta_layers": layer, **run_one(method, options, seed, args.engine, args.epochs, args.standin)}
            runs.append(run)
            print(json.dumps(run), file=sys.stderr, flush=True)
            result = {
                "setup": f"table7 {COLUMN} row {ROWS[args.method]} on the {PROFILE} profile: {args.standin} 16x16, "
                         f"flip noise 40%, ResNet-32 width 8 (1 block per stage), the row's encoder, batch 50, "
                         f"{run['epochs']} epochs, engine "
                         f"{args.engine}, 1 thread; runs interleaved per seed; wall time includes per-epoch "
                         "evaluation" + ("; upper learning rates multiplied by k" if args.scale_upper_lr else "")
                         + f"; meta_layers {args.meta_layers}",
                "method": args.method, "standin": args.standin,
                "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}",
                "summary": summarise(runs, args.k, baseline, layers), "runs": runs,
            }
            if args.write:
                args.write.mkdir(parents=True, exist_ok=True)
                atomic_write_text(args.write / out_name, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
