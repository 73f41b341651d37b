"""Finding label errors: LFM's suspicion score against cleanlab, side by side on an embedded stand-in.

Data (``--data``): scikit-learn digits (the 1,257-image training pool, 8x8 upsampled to
``--image-size``, default 16) or photo_patches (1,260 grey patches of ten scikit-image photos,
see ``lfm_core.data.photo_patches``); 10 clean meta images per class taken out of the pool (100),
label noise injected into the rest with ``lfm_core.noise`` (flip, uniform, pair at 20% and 40%),
for each of ``--seeds`` (split, noise and network seed). Network: the
same ResNet for both (``resnet32`` with ``--width`` 8 and ``--blocks`` 1 per stage by default).
One thread (``torch.set_num_threads(1)``); seconds are wall time, ``cpu`` the process CPU time.

* LFM: one ``lfm_dr.find_label_issues`` run of ``--epochs`` epochs (its default score, ``auto``:
  chosen per run from probes drawn from the meta set; the chosen name and the probes' AUROCs
  are recorded).
* cleanlab: ``--folds``-fold cross-validation of the same network trained with plain
  cross-entropy for the same ``--epochs`` per fold, on the other folds' noisy images plus the
  clean meta images; the out-of-sample predicted probabilities go to
  ``cleanlab.filter.find_label_issues`` (the flagged set) and
  ``cleanlab.rank.get_label_quality_scores`` (the ranking, suspicion = 1 - quality).

Per setting: AUROC of the suspicion for "label is corrupted", precision at k (k = number of
corrupted labels), precision and recall of the flagged set, wall seconds (training included).

    pip install -c constraints.txt cleanlab
    OMP_NUM_THREADS=1 python benchmarks/label_issues.py --data photo_patches --seeds 0,1,2 --json \
        [--write benchmarks/results]   # writes label_issues_<data>.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lfm_core.data import IndexedTensorDataset, load_dataset, make_splits
from lfm_core.io import atomic_write_json
from lfm_core.report import seed_std
from lfm_dr.label_issues import auroc, find_label_issues, train_loop
from lfm_dr.train import TrainConfig, device_of

ALL_SETTINGS = [(n, r) for n in ("flip", "uniform", "pair") for r in (0.2, 0.4)]
QUICK_SETTINGS = [("flip", 0.4), ("pair", 0.2)]


def precision_at_k(scores: np.ndarray, noisy: np.ndarray) -> float:
    k = int(noisy.sum())
    top = np.argsort(-scores, kind="stable")[:k]
    return float(noisy[top].mean()) if k else float("nan")


def flagged_stats(flagged: np.ndarray, noisy: np.ndarray) -> tuple[float, float]:
    """(precision, recall) of a flagged set."""
    hit = int((flagged & noisy).sum())
    return (hit / max(int(flagged.sum()), 1), hit / max(int(noisy.sum()), 1))


def model_kwargs(args) -> dict:
    return {"width": args.width, "blocks_per_stage": args.blocks}


def run_lfm(splits, args) -> tuple[dict, dict]:
    noisy = (splits.train.labels != splits.train.clean_labels).numpy()
    t0, c0 = time.perf_counter(), time.process_time()
    res = find_label_issues(splits.train, splits.meta, splits.num_classes, epochs=args.epochs,
                            model_kwargs=model_kwargs(args), seed=args.seed, device=args.device)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    scores = res.scores.numpy()
    prec, rec = flagged_stats(res.flagged.numpy(), noisy)
    out = {"lfm_auroc": auroc(scores, noisy), "lfm_p_at_k": precision_at_k(scores, noisy),
           "lfm_flag_precision": prec, "lfm_flag_recall": rec, "lfm_flagged": int(res.flagged.sum()),
           "lfm_suggest_acc": float((res.suggested_labels == splits.train.clean_labels)[torch.from_numpy(noisy)]
                                    .float().mean()),
           "lfm_s": seconds, "lfm_cpu_s": cpu}
    out["lfm_score"], out["lfm_probe_auroc"] = res.score_name, res.probe_auroc
    candidates = {k: auroc(v.numpy(), noisy) for k, v in res.candidates.items()}
    return out, candidates


def out_of_sample_probs(splits, args) -> np.ndarray:
    """K-fold predicted probabilities of the same network trained with cross-entropy."""
    from sklearn.model_selection import StratifiedKFold

    train, meta = splits.train, splits.meta
    labels = train.labels.numpy()
    probs = np.zeros((len(train), splits.num_classes))
    folds = StratifiedKFold(n_splits=args.folds, shuffle=True, random_state=args.seed)
    cfg = TrainConfig(method="ce", model="resnet32", model_kwargs=model_kwargs(args), epochs=args.epochs,
                      batch_size=100, lr=0.1, device=args.device)
    device = device_of(cfg)
    for fit_idx, held_idx in folds.split(np.zeros(len(labels)), labels):
        part = train.subset(fit_idx)
        fold_train = IndexedTensorDataset(torch.cat([part.images, meta.images]),
                                          torch.cat([part.labels, meta.labels]), splits.num_classes)
        fold = argparse.Namespace(train=fold_train, meta=meta, num_classes=splits.num_classes)
        model = train_loop(cfg, fold, args.seed).model.eval()
        with torch.no_grad():
            x = train.images[torch.from_numpy(held_idx)].to(device)
            probs[held_idx] = model(x).softmax(1).cpu().numpy()
    return probs


def run_cleanlab(splits, args) -> dict:
    from cleanlab.filter import find_label_issues as cl_find
    from cleanlab.rank import get_label_quality_scores

    noisy = (splits.train.labels != splits.train.clean_labels).numpy()
    t0, c0 = time.perf_counter(), time.process_time()
    probs = out_of_sample_probs(splits, args)
    labels = splits.train.labels.numpy()
    flagged = cl_find(labels, probs)
    scores = 1.0 - get_label_quality_scores(labels, probs)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    prec, rec = flagged_stats(flagged, noisy)
    return {"cleanlab_auroc": auroc(scores, noisy), "cleanlab_p_at_k": precision_at_k(scores, noisy),
            "cleanlab_flag_precision": prec, "cleanlab_flag_recall": rec, "cleanlab_flagged": int(flagged.sum()),
            "cleanlab_suggest_acc": float((probs.argmax(1) == splits.train.clean_labels.numpy())[noisy].mean()),
            "cleanlab_s": seconds, "cleanlab_cpu_s": cpu}


def _mean(rows: list[dict], key: str) -> str:
    values = np.array([r[key] for r in rows], dtype=float)
    return f"{values.mean():.3f}" + (f" ± {seed_std(values):.3f}" if len(values) > 1 else "")


def by_setting(result: dict) -> dict[tuple[str, float], list[dict]]:
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in result["settings"]:
        groups.setdefault((r["noise"], r["rate"]), []).append(r)
    return groups


def markdown_table(result: dict) -> str:
    """The README table: one row per setting (mean ± std over seeds), LFM beside cleanlab."""
    data = result["config"].get("dataset", "digits")
    lines = ["| data | noise | rate | seeds | AUROC LFM | AUROC cleanlab | P@k LFM | P@k cleanlab | score chosen | "
             "cpu s LFM | cpu s cleanlab |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (noise, rate), rows in by_setting(result).items():
        chosen = ", ".join(sorted({r.get("lfm_score", "combined") for r in rows}))
        lines.append(
            f"| {data} | {noise} | {rate:.0%} | {len(rows)} | {_mean(rows, 'lfm_auroc')} | {_mean(rows, 'cleanlab_auroc')} | "
            f"{_mean(rows, 'lfm_p_at_k')} | {_mean(rows, 'cleanlab_p_at_k')} | {chosen} | "
            f"{np.mean([r['lfm_cpu_s'] for r in rows]):.0f} | {np.mean([r['cleanlab_cpu_s'] for r in rows]):.0f} |")
    return "\n".join(lines)


def candidates_table(result: dict) -> str:
    """AUROC of every LFM candidate score, one row per setting."""
    names = list(result["settings"][0]["lfm_candidates_auroc"])
    lines = ["| noise | rate | " + " | ".join(f"`{n}`" for n in names) + " |", "|---|---|" + "---|" * len(names)]
    for (noise, rate), rows in by_setting(result).items():
        mean = {n: np.mean([r["lfm_candidates_auroc"][n] for r in rows]) for n in names}
        lines.append(f"| {noise} | {rate:.0%} | " + " | ".join(f"{mean[n]:.3f}" for n in names) + " |")
    return "\n".join(lines)


def _resume(path: Path | None, config: dict, rows: list[dict]) -> set[tuple[int, str, float]]:
    """Settings already measured in ``path`` under the same configuration (seeds and date aside):
    their rows are kept in ``rows`` and not run again, so ``--seeds 1,2,3`` after ``--seeds 1,2``
    runs seed 3 only. Another configuration is never mixed in: the file is then rewritten."""
    if path is None or not path.exists():
        return set()
    old = json.loads(path.read_text())
    free = ("seeds", "date", "note")
    same = {k: v for k, v in old.get("config", {}).items() if k not in free} == \
        {k: v for k, v in config.items() if k not in free}
    if not same:
        print(f"{path}: another configuration; it is replaced", file=sys.stderr)
        return set()
    kept = [r for r in old["settings"] if r["seed"] in config["seeds"]]
    if "note" in old["config"]:
        config["note"] = old["config"]["note"]
    rows.extend(kept)
    config["date"] = ",".join(sorted({*str(old["config"].get("date", "")).split(","), config["date"]} - {""}))
    print(f"{path}: {len(kept)} setting(s) already measured, kept", file=sys.stderr)
    return {(r["seed"], r["noise"], r["rate"]) for r in kept}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"only {QUICK_SETTINGS}")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--table", type=Path, default=None, help="only print the tables of a label_issues.json")
    p.add_argument("--write", type=Path, default=None, help="write DIR/label_issues_<data>.json (after every setting)")
    p.add_argument("--epochs", type=int, default=20, help="epochs of the LFM run and of every cleanlab fold")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--width", type=int, default=8, help="resnet32 width (16 = the paper's)")
    p.add_argument("--blocks", type=int, default=1, help="resnet32 blocks per stage (5 = ResNet-32)")
    p.add_argument("--meta-per-class", type=int, default=10)
    p.add_argument("--data", choices=("digits", "photo_patches"), default="digits", help="the embedded stand-in")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (split, noise and networks)")
    p.add_argument("--only", default=None, help="comma-separated settings such as flip0.4,pair0.2 (default: all)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.table is not None:
        result = json.loads(args.table.read_text())
        print(markdown_table(result) + "\n\n" + candidates_table(result))
        return result
    torch.set_num_threads(1)
    bundle = load_dataset(args.data, image_size=args.image_size)
    settings = QUICK_SETTINGS if args.quick else ALL_SETTINGS
    if args.only:
        settings = [s for s in settings if f"{s[0]}{s[1]:g}" in args.only.split(",")]
    rows = []
    seeds = [int(v) for v in args.seeds.split(",")]
    config = {"dataset": args.data, "image_size": args.image_size, "model": "resnet32",
              "model_kwargs": {"width": args.width, "blocks_per_stage": args.blocks}, "epochs": args.epochs,
              "folds": args.folds, "meta_per_class": args.meta_per_class, "seeds": seeds,
              "device": args.device, "threads": torch.get_num_threads(), "quick": args.quick,
              "torch": torch.__version__, "machine": platform.machine(),
              "date": time.strftime("%Y-%m-%d", time.gmtime())}
    result = {"settings": rows, "config": config}
    done = _resume(args.write / f"label_issues_{args.data}.json" if args.write else None, config, rows)
    for seed, (noise, rate) in itertools.product(seeds, settings):
        if (seed, noise, rate) in done:
            continue
        args.seed = seed
        splits = make_splits(bundle, args.meta_per_class, seed=seed, noise=noise, noise_rate=rate)
        lfm, candidates = run_lfm(splits, args)
        cl = run_cleanlab(splits, args)
        row = {"noise": noise, "rate": rate, "seed": seed, "actual_rate": splits.info["actual_noise_rate"],
               "n_train": len(splits.train), **lfm, **cl, "lfm_candidates_auroc": candidates}
        rows.append(row)
        print(f"seed {seed} {noise} {rate:.0%}: LFM AUROC {lfm['lfm_auroc']:.3f} ({lfm['lfm_score']}) "
              f"P@k {lfm['lfm_p_at_k']:.3f} "
              f"({lfm['lfm_s']:.0f} s, cpu {lfm['lfm_cpu_s']:.0f} s) | cleanlab AUROC {cl['cleanlab_auroc']:.3f} "
              f"P@k {cl['cleanlab_p_at_k']:.3f} ({cl['cleanlab_s']:.0f} s, cpu {cl['cleanlab_cpu_s']:.0f} s) | "
              "candidates " + " ".join(f"{k}={v:.3f}" for k, v in candidates.items()), file=sys.stderr, flush=True)
        if args.write is not None:  # after every setting, so a stopped run keeps what it measured
            args.write.mkdir(parents=True, exist_ok=True)
            atomic_write_json(args.write / f"label_issues_{args.data}.json", result)
    print(markdown_table(result) + "\n\n" + candidates_table(result), file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
