"""Step cost of LFM against its plain counterpart, measured side by side in one process.

DR:  one LFM-DR outer step (W1 step + W2 step + hypergradient for B, V, r) vs one plain
     cross-entropy step of the same model and batch (ResNet-32, batch 100, ResNet-18 encoder).
NAS: one LFM-DARTS step vs one DARTS second-order step (when lfm-nas is installed).

    python benchmarks/step_cost.py --quick --json      # last line: one JSON object
    python benchmarks/step_cost.py --json --write benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, device, warmup: int, repeat: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peak_memory_mb(fn, device) -> float:
    """Peak GPU memory of one call (CUDA), or the process's peak resident memory (CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_dr(device, batch: int, width: int, encoder: str, warmup: int, repeat: int) -> dict:
    from lfm_core.registries import MODELS
    from lfm_dr.methods.base import DRContext
    from lfm_dr.methods.lfm import LFMReweighting

    n_train, n_meta, k = 1000, 200, 10
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, k, (batch,), generator=g).to(device)
    idx = torch.arange(batch, device=device)
    xm, ym, jm = x.clone(), y.flip(0).clone(), torch.arange(batch, device=device)

    def model_fn():
        return MODELS.create("resnet32", num_classes=k, width=width).to(device)

    ctx_kwargs = dict(model_fn=model_fn, num_classes=k, class_counts=[n_train // k] * k, n_train=n_train,
                      n_meta=n_meta, lr=0.1, device=device, next_meta=lambda: (xm, ym, jm))
    ce_model = model_fn()
    ce_opt = torch.optim.SGD(ce_model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    def ce_step():
        ce_opt.zero_grad(set_to_none=True)
        F.cross_entropy(ce_model(x), y).backward()
        ce_opt.step()

    out = {"ce_step_s": median_time(ce_step, device, warmup, repeat), "ce_mem_mb": peak_memory_mb(ce_step, device)}
    for engine in ("exact", "finite-difference"):
        method = LFMReweighting(DRContext(**ctx_kwargs, options={
            "encoder": encoder, "pretrained": False, "engine": engine}))
        step = lambda: method.train_step(x, y, idx, 0)  # noqa: E731
        key = "lfm" if engine == "exact" else "fd"
        out[f"{key}_step_s"] = median_time(step, device, warmup, repeat)
        out[f"{key}_mem_mb"] = peak_memory_mb(step, device)
    out["ratio"] = out["lfm_step_s"] / out["ce_step_s"]
    out["fd_ratio"] = out["fd_step_s"] / out["ce_step_s"]
    out["engine"] = "exact"
    out["setup"] = f"ResNet-32 (width {width}), batch {batch}, {encoder} encoder, 32x32"
    return out


def bench_nas(device, batch: int, warmup: int, repeat: int) -> dict | None:
    try:
        from lfm_nas.bench import nas_step_costs  # provided by lfm-nas
    except ImportError:
        return None
    return nas_step_costs(device=device, batch=batch, warmup=warmup, repeat=repeat,
                          time_fn=median_time, mem_fn=peak_memory_mb)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (about a minute on 2 CPU cores)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--write", type=Path, default=None, help="folder for <device>.json results")
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--skip-nas", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    warmup, repeat = (1, 3) if args.quick else (2, 7)
    result = {
        "dr": bench_dr(device, args.batch, 16, args.encoder, warmup, repeat),
        "nas": None if args.skip_nas else bench_nas(device, 32 if device.type == "cuda" else 16, warmup, repeat),
        "device": (torch.cuda.get_device_name(0) if device.type == "cuda"
                   else f"cpu x{os.cpu_count()} ({platform.processor() or platform.machine()})"),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if args.write:
        args.write.mkdir(parents=True, exist_ok=True)
        name = "cuda" if device.type == "cuda" else "cpu"
        tmp = args.write / f".{name}.json.tmp"
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(args.write / f"{name}.json")
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
