"""How the cost of an LFM step grows: LFM-DR / CE and LFM-DARTS / DARTS-2nd step time and memory
against the batch sizes, the encoder, the data-set size and the supernet's cells and channels.

DR (the ``cpu`` profile's networks: ResNet-32 width 8 with one block per stage, 16x16 images,
10 classes, random data): one LFM-DR step (``LFMReweighting.train_step``, exact engine) against
one plain cross-entropy SGD step of the same network on the same training batch. Every DR point
starts from batch 100, meta batch 100, small CNN encoder, n_train 2,000, n_meta 500 and moves one
of them:

* ``batch``: the training batch (50-400); ``meta``: the meta batch (50-400);
* ``encoder``: V = smallcnn, ResNet-18, -34, -50 (timm, random init);
* ``data``: n_train = 1e3-1e6 with n_meta = n_train / 10 (b and r, one entry per example, and
  their Adam moments are dense vectors updated every step).

NAS (``lfm_nas.bench.nas_step_costs``, batch 16, 16x16): one DARTS second-order step against one
LFM-DARTS step (two supernets + ResNet-18 encoder) and one with parameter sharing (PS), against
the number of cells (``nas``: 3, 5, 8 at C=8) and the channels (``nas_c``: C = 4, 8, 16 at 5 cells).

Times: thread-CPU-time medians of interleaved steps (DR) or consecutive steps (NAS), one thread
(steadier than wall time on a shared machine). Memory: peak growth of the resident set during
one warm step (the step after a first one, so optimiser state is already there), measured in a
fresh process with ``MALLOC_MMAP_THRESHOLD_=4096`` as ``step_cost.py`` does; ``--no-memory``
skips it.

    python benchmarks/scaling.py --quick                   # about 2 minutes
    python benchmarks/scaling.py --write benchmarks/results --png benchmarks/scaling.png
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lfm_core.io import atomic_write_text
from lfm_core.registries import MODELS
from lfm_core.runtime import compile_module
from lfm_dr.methods.base import DRContext
from lfm_dr.methods.lfm import LFMReweighting
from step_cost import MALLOC_ENV, peak_memory_mb
from three_level import interleaved_times

K, IMAGE, NAS_BATCH = 10, 16, 16
NET = {"width": 8, "blocks_per_stage": 1}
DR_BASE = {"batch": 100, "meta_batch": 100, "encoder": "smallcnn", "n_train": 2000, "n_meta": 500}
SWEEPS = ("batch", "meta", "encoder", "data", "nas", "nas_c")


def plan(quick: bool) -> dict[str, list[dict]]:
    """The points of every sweep (DR points: changes to DR_BASE; NAS points: C and cells)."""
    sizes = (50, 200) if quick else (50, 100, 200, 400)
    encoders = ("smallcnn", "resnet18") if quick else ("smallcnn", "resnet18", "resnet34", "resnet50")
    ns = (10**3, 10**5) if quick else (10**3, 10**4, 10**5, 10**6)
    return {
        "batch": [{"batch": s} for s in sizes],
        "meta": [{"meta_batch": s} for s in sizes],
        "encoder": [{"encoder": e} for e in encoders],
        "data": [{"n_train": n, "n_meta": n // 10} for n in ns],
        "nas": [{"C": 4, "layers": 3}] if quick else [{"C": 8, "layers": n} for n in (3, 5, 8)],
        "nas_c": [] if quick else [{"C": c, "layers": 5} for c in (4, 8, 16)],
    }


def dr_steps(batch, meta_batch, encoder, n_train, n_meta, engine="exact", compiled=False):
    """(CE step, LFM-DR step, the LFM method) on fixed random batches; ``compiled``: every network
    through ``lfm_core.runtime.compile_module`` (what ``--compile`` does)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, 3, IMAGE, IMAGE, generator=g), torch.randint(0, K, (batch,), generator=g)
    xm, ym = torch.randn(meta_batch, 3, IMAGE, IMAGE, generator=g), torch.randint(0, K, (meta_batch,), generator=g)
    idx, jm = torch.randperm(n_train, generator=g)[:batch], torch.randperm(n_meta, generator=g)[:meta_batch]

    def model_fn():
        net = MODELS.create("resnet32", num_classes=K, **NET)
        return compile_module(net) if compiled else net

    torch.manual_seed(0)
    ce_net = model_fn()
    ce_opt = torch.optim.SGD(ce_net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    def ce_step():
        ce_opt.zero_grad(set_to_none=True)
        F.cross_entropy(ce_net(x), y).backward()
        ce_opt.step()

    method = LFMReweighting(DRContext(
        model_fn=model_fn, num_classes=K, class_counts=[n_train // K] * K, n_train=n_train, n_meta=n_meta,
        lr=0.05, next_meta=lambda: (xm, ym, jm), compile=compiled,
        options={"encoder": encoder, "pretrained": False, "engine": engine}))
    return ce_step, lambda: method.train_step(x, y, idx, 0), method


def per_example_state_mb(method) -> float:
    """b and r, their gradients and Adam moments, and the log of each example's latest weight."""
    tensors = [method.b, method.r, method.b.grad, method.r.grad, method.weight_log.values]
    tensors += [v for t in (method.b, method.r) for v in method.upper_opt.state.get(t, {}).values()]
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t)) / 2**20


def cpu_median(fn, device, warmup, repeat) -> float:
    return interleaved_times([fn], device, warmup, repeat)[1][0]


def warm_peak_mb(fn, device) -> float:
    fn()  # the first step creates the optimiser state; measure the next one
    return peak_memory_mb(fn, device)


def measure(sweep: str, change: dict, warmup: int, repeat: int, memory: bool) -> dict:
    """One point: times (memory=False) or peak memory (memory=True, in the strict-allocator process)."""
    cpu = torch.device("cpu")
    if sweep.startswith("nas"):
        from lfm_nas.bench import nas_step_costs

        out = nas_step_costs(device=cpu, batch=NAS_BATCH, warmup=warmup, repeat=repeat, image_size=IMAGE,
                             time_fn=None if memory else cpu_median, mem_fn=warm_peak_mb if memory else None,
                             **change)
        return {k: v for k, v in out.items() if k.endswith(("_step_s", "_mem_mb", "ratio"))}
    args = {**DR_BASE, **change}
    ce, lfm, method = dr_steps(**args)
    if memory:
        return {"ce_mem_mb": warm_peak_mb(ce, cpu), "lfm_mem_mb": warm_peak_mb(lfm, cpu)}
    _, (ce_s, lfm_s) = interleaved_times([ce, lfm], cpu, warmup, repeat)
    return {**args, "ce_step_s": ce_s, "lfm_step_s": lfm_s, "ratio": lfm_s / ce_s,
            "encoder_params_m": sum(p.numel() for p in method.encoder.parameters()) / 1e6,
            "per_example_state_mb": per_example_state_mb(method)}


def run(sweeps, quick, reps: dict, memory) -> list[dict]:
    """Every point of the sweeps; ``reps``: (warmup, repeat) for "dr" and "nas" points."""
    points = []
    for sweep in sweeps:
        warmup, repeat = reps["nas" if sweep.startswith("nas") else "dr"]
        for change in plan(quick)[sweep]:
            t = time.perf_counter()
            point = {"sweep": sweep, **change, **measure(sweep, change, warmup, repeat, memory)}
            print(json.dumps(point | {"wall_s": round(time.perf_counter() - t, 1)}), file=sys.stderr, flush=True)
            points.append(point)
    return points


def add_memory(points: list[dict], argv: list[str]) -> None:
    """Peak memory of every point, from this script run again in a fresh strict-allocator process."""
    proc = subprocess.run([sys.executable, __file__, *argv, "--memory-only"], capture_output=True, text=True,
                          env={**os.environ, **MALLOC_ENV})
    if proc.returncode != 0:
        raise SystemExit(f"memory run failed: {proc.stderr.strip().splitlines()[-1:]}")
    for point, mem in zip(points, json.loads(proc.stdout.strip().splitlines()[-1])):
        point.update({k: v for k, v in mem.items() if k.endswith("_mem_mb")})
        for key, base in (("mem_ratio", "lfm"), ("ps_mem_ratio", "ps")):
            plain = point.get("ce_mem_mb", point.get("darts_mem_mb"))
            if f"{base}_mem_mb" in point and plain:
                point[key] = point[f"{base}_mem_mb"] / plain


PANELS = {  # sweep: (x key, x label, log base)
    "batch": ("batch", "training batch (meta 100)", 2),
    "meta": ("meta_batch", "meta batch (training 100)", 2),
    "encoder": ("encoder_params_m", "encoder V, M parameters", 0),
    "data": ("n_train", "n_train (n_meta = n_train / 10)", 10),
    "nas": ("layers", "DARTS cells (C=8)", 0),
    "nas_c": ("C", "DARTS channels C (5 cells)", 2),
}


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweeps = [s for s in PANELS if any(p["sweep"] == s for p in points)]
    cols = min(3, len(sweeps))
    rows = -(-len(sweeps) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
    for ax, sweep in zip(axes.flat, sweeps):
        key, label, base = PANELS[sweep]
        pts = [p for p in points if p["sweep"] == sweep]
        xs = [p[key] for p in pts]
        nas = sweep.startswith("nas")
        for ratio, style, name in (("ratio", "o-", "time"), ("mem_ratio", "s--", "memory"),
                                   ("ps_ratio", "^-", "PS time"), ("ps_mem_ratio", "v--", "PS memory")):
            if all(ratio in p for p in pts):
                ax.plot(xs, [p[ratio] for p in pts], style, label=f"{'LFM-DARTS ' if nas else ''}{name}")
        if base:
            ax.set_xscale("log", base=base)
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
        if sweep == "encoder":
            for p in pts:
                ax.annotate(p["encoder"], (p[key], p["ratio"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(label, fontsize=8)
        ax.set_ylabel("/ DARTS-2nd step" if nas else "LFM-DR / CE step", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(sweeps):]:
        ax.axis("off")
    fig.suptitle("Cost ratios, 1 CPU thread (time: thread CPU time; memory: peak RSS growth of a warm step)",
                 fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweeps", default=",".join(SWEEPS), help=f"comma-separated, of {', '.join(SWEEPS)}")
    parser.add_argument("--quick", action="store_true", help="two points per DR sweep, one small NAS point (C=4, 3 "
                                                             "cells), fewer repeats (about 2 minutes)")
    parser.add_argument("--repeat", type=int, default=None, help="timed DR steps, after 2 (quick: 1); default 9 "
                                                                 "(quick: 3)")
    parser.add_argument("--nas-repeat", type=int, default=None, help="timed NAS steps, after 1; default 3 (quick: 1)")
    parser.add_argument("--no-memory", action="store_true", help="times only")
    parser.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--write", type=Path, default=None, help="folder for scaling.json")
    parser.add_argument("--png", type=Path, default=None, help="figure, one panel per sweep")
    args = parser.parse_args(argv)
    sweeps = [s for s in args.sweeps.split(",") if s]
    if unknown := set(sweeps) - set(SWEEPS):
        parser.error(f"unknown sweeps {sorted(unknown)}")
    reps = {"dr": (1 if args.quick else 2, args.repeat or (3 if args.quick else 9)),
            "nas": (1, args.nas_repeat or (1 if args.quick else 3))}
    torch.set_num_threads(1)
    if args.memory_only:
        print(json.dumps(run(sweeps, args.quick, {"dr": (0, 0), "nas": (0, 0)}, memory=True)))
        return 0
    points = run(sweeps, args.quick, reps, memory=False)
    if not args.no_memory:
        add_memory(points, ["--sweeps", ",".join(sweeps)] + ["--quick"] * args.quick)
    result = {
        "setup": f"DR: ResNet-32 width 8 (1 block per stage), {IMAGE}x{IMAGE}, exact engine, base point {DR_BASE}; "
                 f"NAS: nas_step_costs batch {NAS_BATCH}, {IMAGE}x{IMAGE}, ResNet-18 encoder, exact; "
                 f"thread CPU-time medians of (DR) {reps['dr'][1]} steps after {reps['dr'][0]}, (NAS) "
                 f"{reps['nas'][1]} after {reps['nas'][0]}; memory: peak RSS growth of one "
                 f"warm step, separate process with MALLOC_MMAP_THRESHOLD_=4096" + (" (not run)" * args.no_memory),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} x{os.cpu_count()}, 1 thread, torch {torch.__version__}",
        "points": points,
    }
    if args.write:
        args.write.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.write / "scaling.json", json.dumps(result, indent=2) + "\n")
    if args.png:
        plot(points, args.png)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
