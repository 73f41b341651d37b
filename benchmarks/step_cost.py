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
    """Peak memory of one call: CUDA memory above what was allocated before it, or on CPU the
    growth of the resident set with freed tensors returned to the OS at once (so the figure
    tracks live tensors; measured after every timing, since it slows allocation down)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    from lfm_core.runtime import PeakMemory

    with PeakMemory(device, strict=True) as mem:
        fn()
    return float("nan") if mem.peak_mb is None else mem.peak_mb


ENGINES = {"lfm": "exact", "rev": "exact-reverse", "fd": "finite-difference", "fwd": "forward-difference"}


def stage_seconds(step, repeat: int = 2) -> dict:
    """Seconds per step in each stage of the solver (its torch.profiler ranges "lfm.*")."""
    from torch.profiler import profile

    step()
    with profile() as prof:
        for _ in range(repeat):
            step()
    return {e.key[4:]: round(e.cpu_time_total / 1e6 / repeat, 4)
            for e in prof.key_averages() if e.key.startswith("lfm.")}


def bench_dr(device, batch: int, width: int, encoder: str, warmup: int, repeat: int, profile: bool = False,
             timing: bool = True, memory: bool = True, meta_layers: str = "all") -> dict:
    from lfm_core.registries import MODELS
    from lfm_dr.methods.base import DRContext
    from lfm_dr.methods.lfm import DRProblem, LFMReweighting

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

    def lfm(engine, layers=meta_layers):
        torch.manual_seed(0)  # the same initial networks for every engine
        return LFMReweighting(DRContext(**ctx_kwargs, options={
            "encoder": encoder, "pretrained": False, "engine": engine, "meta_layers": layers}))

    def rel_err(got, ref):
        num = sum(float((got[k] - ref[k]).double().norm() ** 2) for k in ref) ** 0.5
        return num / sum(float(ref[k].double().norm() ** 2) for k in ref) ** 0.5

    steps = {"ce": ce_step}
    for key, engine in ENGINES.items():
        method = lfm(engine)
        steps[key] = lambda method=method: method.train_step(x, y, idx, 0)
    out: dict = {}
    if timing:
        # how far each difference engine's first hypergradient is from the exact one (same state)
        grads = {}
        for key, engine in ENGINES.items():
            method = lfm(engine)
            problem = DRProblem(method.w1, method.w2, method.encoder, x, y, idx, xm, ym, jm, "dot", "none")
            grads[key] = method.solver.step(problem, update_upper=True).grads
        out.update({f"{key}_step_s": median_time(step, device, warmup, repeat) for key, step in steps.items()})
        out["rev_rel_err"] = rel_err(grads["rev"], grads["lfm"])  # exact to rounding
        out["fd_rel_err"] = rel_err(grads["fd"], grads["lfm"])
        out["fwd_rel_err"] = rel_err(grads["fwd"], grads["lfm"])
        if meta_layers != "all":  # how far the layer-wise approximation is from the full hypergradient
            method = lfm("exact", "all")
            problem = DRProblem(method.w1, method.w2, method.encoder, x, y, idx, xm, ym, jm, "dot", "none")
            full = method.solver.step(problem, update_upper=True).grads
            out["vs_full_rel_err"] = rel_err(grads["lfm"], full)
            out["vs_full_cosine_b"] = float(F.cosine_similarity(grads["lfm"]["b"].double(), full["b"].double(), 0))
    if memory:
        out.update({f"{key}_mem_mb": peak_memory_mb(step, device) for key, step in steps.items()})
    if profile and timing:
        out["profile"] = {key: stage_seconds(steps[key]) for key in ENGINES}
    out.update(dr_ratios(out))
    out["engine"] = "exact"
    out["setup"] = f"ResNet-32 (width {width}), batch {batch}, {encoder} encoder, 32x32" + (
        f", meta_layers={meta_layers}" if meta_layers != "all" else "")
    return out


def _mem_ratios_dr(out: dict) -> dict:
    return {f"{key}_mem_ratio": out[f"{key}_mem_mb"] / out["ce_mem_mb"] for key in ENGINES
            if f"{key}_mem_mb" in out and out.get("ce_mem_mb")}


def dr_ratios(out: dict) -> dict:
    return {name: out[f"{key}_step_s"] / out["ce_step_s"]
            for name, key in (("ratio", "lfm"), ("rev_ratio", "rev"), ("fd_ratio", "fd"), ("fwd_ratio", "fwd"))
            if f"{key}_step_s" in out and "ce_step_s" in out}


def bench_nas(device, batch: int, warmup: int, repeat: int, timing: bool = True, memory: bool = True) -> dict | None:
    try:
        from lfm_nas.bench import nas_step_costs  # provided by lfm-nas
    except ImportError:
        return None
    return nas_step_costs(device=device, batch=batch, warmup=warmup, repeat=repeat,
                          time_fn=median_time if timing else None, mem_fn=peak_memory_mb if memory else None)


# glibc's mmap threshold for the memory run: every freed tensor of 4 KiB or more leaves the
# resident set at once. Set at process start (in the environment): set later with mallopt, the
# heap keeps what earlier frees fragmented. It slows allocation down, so timings run apart.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4096"}


def memory_in_subprocess(argv: list[str]) -> dict:
    """The memory fields, measured by this script in a fresh process with ``MALLOC_ENV``."""
    import subprocess

    cmd = [sys.executable, __file__, *argv, "--memory-only", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **MALLOC_ENV})
    if proc.returncode != 0:
        raise SystemExit(f"memory run failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summary_markdown(result: dict) -> str:
    """The Markdown block that ``--write`` puts into benchmarks/README.md."""
    dr, nas = result["dr"], result["nas"]
    ms = lambda key: f"{dr[key] * 1000:.0f} ms"  # noqa: E731
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {result['device']}, {result['threads']} thread(s), "
        f"torch {result['torch']}; {dr['setup']}.",
        "",
        "| CE step | LFM exact | ratio | exact-reverse | ratio | finite-difference | ratio | forward-difference | "
        "ratio | rel. error rev / fd / fwd vs exact | peak memory CE / exact / rev / fd / fwd |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {ms('ce_step_s')} | {ms('lfm_step_s')} | **{dr['ratio']:.2f}x** | {ms('rev_step_s')} | "
        f"**{dr['rev_ratio']:.2f}x** | {ms('fd_step_s')} | "
        f"**{dr['fd_ratio']:.2f}x** | {ms('fwd_step_s')} | **{dr['fwd_ratio']:.2f}x** | "
        f"{dr['rev_rel_err']:.1e} / {dr['fd_rel_err']:.2%} / {dr['fwd_rel_err']:.2%} | "
        f"{dr['ce_mem_mb']:.0f} / {dr['lfm_mem_mb']:.0f} / {dr['rev_mem_mb']:.0f} / {dr['fd_mem_mb']:.0f} / "
        f"{dr['fwd_mem_mb']:.0f} MB |",
    ]
    if dr.get("profile"):
        stages = list(next(iter(dr["profile"].values())))
        lines += ["", "Seconds per stage of one LFM-DR step (torch.profiler ranges `lfm.*`; the profiler adds "
                  "overhead):", "", "| engine | " + " | ".join(stages) + " |", "|---" * (len(stages) + 1) + "|"]
        lines += [f"| {ENGINES[k]} | " + " | ".join(f"{v.get(st, 0):.2f}" for st in stages) + " |"
                  for k, v in dr["profile"].items()]
    if nas:
        lines += ["", f"LFM-DARTS: {nas['setup']}.", "",
                  "| DARTS 2nd step | LFM-DARTS | time | memory | LFM-DARTS + PS | time | memory |",
                  "|---|---|---|---|---|---|---|",
                  f"| {nas['darts_step_s']:.2f} s, {nas['darts_mem_mb']:.0f} MB | {nas['lfm_step_s']:.2f} s, "
                  f"{nas['lfm_mem_mb']:.0f} MB | **{nas['ratio']:.2f}x** | **{nas['mem_ratio']:.2f}x** | "
                  f"{nas['ps_step_s']:.2f} s, {nas['ps_mem_mb']:.0f} MB | **{nas['ps_ratio']:.2f}x** | "
                  f"**{nas['ps_mem_ratio']:.2f}x** |"]
    return "\n".join(lines)


def write_results(result: dict, folder: Path, name: str) -> None:
    """``<folder>/<name>.json`` and the ``<!-- step_cost:<name> -->`` block of the README beside
    ``folder`` (both written atomically; the rest of the README is left as it is)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.json.tmp"
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(folder / f"{name}.json")
    replace_readme_block(folder.parent / "README.md", f"step_cost:{name}", summary_markdown(result),
                         f"### Latest `nox -s bench` ({name})")


def replace_readme_block(readme: Path, tag: str, body: str, heading: str) -> None:
    """Put ``body`` between ``<!-- tag -->`` and ``<!-- /tag -->`` of ``readme`` (appended under
    ``heading`` when the markers are missing), written atomically; nothing when there is no README."""
    if not readme.is_file():
        return
    start, end = f"<!-- {tag} -->", f"<!-- /{tag} -->"
    text = readme.read_text()
    block = f"{start}\n{body}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + f"\n\n{heading}\n\n{block}\n"
    tmp = readme.with_name(".README.md.tmp")
    tmp.write_text(text)
    tmp.replace(readme)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (about a minute on 2 CPU cores)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--write", type=Path, default=None, help="folder for <device>.json results")
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--skip-nas", action="store_true")
    parser.add_argument("--meta-layers", choices=("all", "last"), default="all",
                        help="LFM-DR's meta_layers (last: the hypergradient through the classifier only; "
                             "results in <device>-last-layer.json)")
    parser.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true",
                        help="also time each stage of the LFM-DR step (torch.profiler ranges lfm.*)")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    warmup, repeat = (1, 3) if args.quick else (2, 7)
    # CPU: timings here, peak memory in a fresh process with the allocator set for measuring
    apart = device.type == "cpu" and not args.memory_only
    timing, memory = not args.memory_only, not apart
    nas_batch = 32 if device.type == "cuda" else 16
    result = {
        "dr": bench_dr(device, args.batch, 16, args.encoder, warmup, repeat, args.profile and timing, timing, memory,
                       args.meta_layers),
        "nas": None if args.skip_nas else bench_nas(device, nas_batch, warmup, repeat, timing, memory),
        "device": (torch.cuda.get_device_name(0) if device.type == "cuda"
                   else f"cpu x{os.cpu_count()} ({platform.processor() or platform.machine()})"),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if apart:
        passed = ["--batch", str(args.batch), "--encoder", args.encoder, "--device", str(device)]
        passed += ["--quick"] * args.quick + ["--skip-nas"] * args.skip_nas + ["--meta-layers", args.meta_layers]
        mem = memory_in_subprocess(passed)
        for part in ("dr", "nas"):
            if result[part] is not None and mem.get(part):
                result[part].update({k: v for k, v in mem[part].items() if k.endswith("_mem_mb")})
        result["dr"].update(dr_ratios(result["dr"]) | _mem_ratios_dr(result["dr"]))
        if result["nas"] is not None:
            from lfm_nas.bench import nas_ratios

            result["nas"].update(nas_ratios(result["nas"]))
            result["nas"]["setup"] += "; memory measured in a separate process with MALLOC_MMAP_THRESHOLD_=4096"
    if args.write:
        suffix = "" if args.meta_layers == "all" else f"-{args.meta_layers}-layer"
        write_results(result, args.write, ("cuda" if device.type == "cuda" else "cpu") + suffix)
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
