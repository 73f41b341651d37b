"""How the LFM-DR / CE step-time ratio grows with the batch size and the meta batch size.

The networks of the ``cpu`` profile (ResNet-32 width 8 with one block per stage, small CNN
encoder, 16x16 images, 10 classes, random data): one LFM-DR step (``LFMReweighting.train_step``,
exact engine) against one plain cross-entropy SGD step of the same network on the same training
batch. Two sweeps: the training batch with the meta batch fixed at 100, and the meta batch with
the training batch fixed at 100. Times are medians of interleaved steps by the thread's CPU time
(one thread; steadier than wall time on a shared machine).

    python benchmarks/scaling.py [--write benchmarks/results] [--png benchmarks/scaling.png]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from lfm_core.io import atomic_write_text
from lfm_core.registries import MODELS
from lfm_dr.methods.base import DRContext
from lfm_dr.methods.lfm import LFMReweighting
from three_level import interleaved_times

SIZES = (50, 100, 200, 400)
FIXED = 100
K, N_TRAIN, N_META, IMAGE = 10, 2000, 500, 16
NET = {"width": 8, "blocks_per_stage": 1}


def step_pair(batch: int, meta_batch: int, engine: str):
    """(CE step, LFM-DR step) on fixed random batches of the given sizes."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, 3, IMAGE, IMAGE, generator=g), torch.randint(0, K, (batch,), generator=g)
    xm, ym = torch.randn(meta_batch, 3, IMAGE, IMAGE, generator=g), torch.randint(0, K, (meta_batch,), generator=g)
    idx, jm = torch.arange(batch), torch.arange(meta_batch)

    def model_fn():
        return MODELS.create("resnet32", num_classes=K, **NET)

    torch.manual_seed(0)
    ce_net = model_fn()
    ce_opt = torch.optim.SGD(ce_net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    def ce_step():
        ce_opt.zero_grad(set_to_none=True)
        F.cross_entropy(ce_net(x), y).backward()
        ce_opt.step()

    method = LFMReweighting(DRContext(
        model_fn=model_fn, num_classes=K, class_counts=[N_TRAIN // K] * K, n_train=N_TRAIN, n_meta=N_META, lr=0.05,
        next_meta=lambda: (xm, ym, jm), options={"encoder": "smallcnn", "pretrained": False, "engine": engine}))
    return ce_step, lambda: method.train_step(x, y, idx, 0)


def sweep(engine: str, warmup: int, repeat: int) -> list[dict]:
    points = []
    for axis in ("batch", "meta_batch"):
        for size in SIZES:
            batch, meta_batch = (size, FIXED) if axis == "batch" else (FIXED, size)
            ce, lfm = step_pair(batch, meta_batch, engine)
            _, (ce_s, lfm_s) = interleaved_times([ce, lfm], torch.device("cpu"), warmup, repeat)
            point = {"axis": axis, "batch": batch, "meta_batch": meta_batch, "ce_cpu_s": ce_s, "lfm_cpu_s": lfm_s,
                     "ratio": lfm_s / ce_s}
            print(json.dumps(point), file=sys.stderr, flush=True)
            points.append(point)
    return points


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, axis, label in zip(axes, ("batch", "meta_batch"), ("training batch (meta batch 100)",
                                                               "meta batch (training batch 100)")):
        pts = [p for p in points if p["axis"] == axis]
        ax.plot([p[axis] for p in pts], [p["ratio"] for p in pts], "o-")
        ax.set_xscale("log", base=2)
        ax.set_xticks(SIZES, [str(s) for s in SIZES])
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("LFM-DR step / CE step (CPU time)")
    fig.suptitle("LFM-DR (exact) vs CE step, ResNet-32 w8, smallcnn encoder, 16x16, 1 CPU thread", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="exact")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--write", type=Path, default=None, help="folder for scaling.json")
    parser.add_argument("--png", type=Path, default=None, help="figure of both sweeps")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = {
        "setup": f"ResNet-32 width 8 (1 block per stage), smallcnn encoder, {IMAGE}x{IMAGE}, engine {args.engine}; "
                 f"thread CPU-time medians of {args.repeat} interleaved steps after {args.warmup}",
        "machine": f"{platform.machine()}, 1 thread, torch {torch.__version__}",
        "points": sweep(args.engine, args.warmup, args.repeat),
    }
    if args.write:
        args.write.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.write / "scaling.json", json.dumps(result, indent=2) + "\n")
    if args.png:
        plot(result["points"], args.png)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
