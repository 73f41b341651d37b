"""What ``--compile`` (torch.compile of the networks, inductor) buys per step.

The networks of the ``cpu`` profile (ResNet-32 width 8 with one block per stage, small CNN
encoder, 16x16 images, batch = meta batch = 50, random data): a plain cross-entropy SGD step and
one LFM-DR step (``LFMReweighting.train_step``) per engine, each with eager and with compiled
networks (``lfm_core.runtime.compile_module``, what ``lfm-bench run --compile`` does), timed in
turns in one process by the thread's CPU time. The first call of each compiled step is timed
apart: that is the compilation a run pays once.

    python benchmarks/compile_cost.py [--engines exact,forward-difference] [--write benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import platform
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
from three_level import interleaved_times

K, N_TRAIN, N_META, IMAGE, BATCH = 10, 2000, 500, 16, 50
NET = {"width": 8, "blocks_per_stage": 1}


def batches():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(BATCH, 3, IMAGE, IMAGE, generator=g), torch.randint(0, K, (BATCH,), generator=g)
    xm, ym = torch.randn(BATCH, 3, IMAGE, IMAGE, generator=g), torch.randint(0, K, (BATCH,), generator=g)
    return x, y, xm, ym


def ce_step(compiled: bool):
    x, y, _, _ = batches()
    torch.manual_seed(0)
    net = MODELS.create("resnet32", num_classes=K, **NET)
    if compiled:
        compile_module(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()

    return step


def lfm_step(engine: str, compiled: bool):
    x, y, xm, ym = batches()
    idx, jm = torch.arange(BATCH), torch.arange(BATCH)

    def model_fn():
        net = MODELS.create("resnet32", num_classes=K, **NET)
        return compile_module(net) if compiled else net

    torch.manual_seed(0)
    method = LFMReweighting(DRContext(
        model_fn=model_fn, num_classes=K, class_counts=[N_TRAIN // K] * K, n_train=N_TRAIN, n_meta=N_META, lr=0.05,
        next_meta=lambda: (xm, ym, jm), compile=compiled,
        options={"encoder": "smallcnn", "pretrained": False, "engine": engine}))
    return lambda: method.train_step(x, y, idx, 0)


def first_call(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default="exact,forward-difference")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--write", type=Path, default=None, help="folder for compile.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    names = ["ce"] + [f"lfm_{e}" for e in args.engines.split(",")]
    makers = [ce_step] + [lambda c, e=e: lfm_step(e, c) for e in args.engines.split(",")]
    fns, compile_s = [], {}
    for name, make in zip(names, makers):
        fns.append(make(False))
        fns.append(make(True))
        compile_s[name] = round(first_call(fns[-1]), 2)
    _, cpu = interleaved_times(fns, torch.device("cpu"), args.warmup, args.repeat)
    rows = {}
    for i, name in enumerate(names):
        eager_s, compiled_s = cpu[2 * i], cpu[2 * i + 1]
        rows[name] = {"eager_ms": round(1e3 * eager_s, 2), "compiled_ms": round(1e3 * compiled_s, 2),
                      "speedup": round(eager_s / compiled_s, 3), "first_compiled_call_s": compile_s[name]}
    for name in names[1:]:
        rows[name]["ratio_to_ce_eager"] = round(rows[name]["eager_ms"] / rows["ce"]["eager_ms"], 2)
        rows[name]["ratio_to_ce_compiled"] = round(rows[name]["compiled_ms"] / rows["ce"]["compiled_ms"], 2)
    result = {
        "setup": f"ResNet-32 width 8 (1 block per stage), smallcnn encoder, {IMAGE}x{IMAGE}, batch {BATCH}, "
                 f"meta batch {BATCH}; thread CPU-time medians of {args.repeat} interleaved steps after "
                 f"{args.warmup}; first compiled call: wall seconds (the compilation)",
        "machine": f"{platform.machine()}, 1 thread, torch {torch.__version__}",
        "steps": rows,
    }
    if args.write:
        args.write.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.write / "compile.json", json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
