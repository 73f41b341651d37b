"""What ``--compile`` (torch.compile of the networks, inductor) buys per step.

The networks of the ``cpu`` profile (ResNet-32 width 8 with one block per stage, small CNN
encoder, 16x16 images, batch = meta batch = 50, random data; ``scaling.dr_steps``): a plain
cross-entropy SGD step and one LFM-DR step (``LFMReweighting.train_step``) per engine, each with
eager and with compiled networks (``lfm_core.runtime.compile_module``, what ``lfm-bench run
--compile`` does), timed in turns in one process by the thread's CPU time. The first call of each
compiled step is timed apart: that is the compilation a run pays once.

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

from lfm_core.io import atomic_write_text
from scaling import IMAGE, dr_steps
from three_level import interleaved_times

N_TRAIN, N_META, BATCH = 2000, 500, 50


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
    engines = args.engines.split(",")
    made = {c: [dr_steps(BATCH, BATCH, "smallcnn", N_TRAIN, N_META, e, compiled=c) for e in engines]
            for c in (False, True)}
    # name -> (eager step, compiled step); the CE step is the one built beside the first engine
    steps = {"ce": (made[False][0][0], made[True][0][0])}
    steps.update({f"lfm_{e}": (made[False][i][1], made[True][i][1]) for i, e in enumerate(engines)})
    names, fns, compile_s = list(steps), [], {}
    for name, (eager, compiled) in steps.items():
        fns += [eager, compiled]
        compile_s[name] = round(first_call(compiled), 2)
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
