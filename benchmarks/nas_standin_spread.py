"""Which embedded stand-in separates NAS architectures better (issue #22): on the cpu profile, the
test error of random cells, DARTS-2nd and LFM-DARTS-2nd-R18, on each stand-in.

DARTS-2nd and LFM-DARTS-2nd-R18 are table I's rows, run by the suite's own command
(``lfm-bench run table1 --profile cpu --only DARTS-2nd --standin S``: search, then evaluation).
A random cell is the genotype DARTS derives from random architecture weights (standard normal,
one generator seed per cell) in the cpu supernet's space, trained from scratch exactly as table I
evaluates a searched cell (``NASExperiment.run_eval``, the cpu profile's ``EvalSettings``,
evaluation seed 0), so the random cells differ in their architecture only.

Per stand-in: mean ± std test error per method, the spread of the method means (max - min) and
the std across random cells. Writes ``benchmarks/results/nas_standin_spread.json``.

    python benchmarks/nas_standin_spread.py --seeds 0,1 --random-cells 12 --results /tmp/nasstd-spread
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "results" / "nas_standin_spread.json"
ROWS = ("DARTS-2nd", "LFM-DARTS-2nd-R18")
RANDOM = "random cells"


def table_command(standin: str, seeds: str, results: Path) -> list[str]:
    return ["lfm-bench", "run", "table1", "--profile", "cpu", "--only", "DARTS-2nd", "--seeds", seeds,
            "--standin", standin, "--results", str(results)]


def table_errors(results: Path, standin: str, seeds: list[int]) -> dict[str, dict[int, float]]:
    """Table I's finished cpu runs on ``standin``: row -> seed -> test error (%)."""
    out: dict[str, dict[int, float]] = {row: {} for row in ROWS}
    for path in sorted((results / "table1" / "cpu").glob("*/seed*/result.json")):
        rec = json.loads(path.read_text())
        if rec["row"] in out and rec["params"]["dataset"] == standin and rec["seed"] in seeds:
            out[rec["row"]][rec["seed"]] = float(rec["metrics"]["test_err"])
    return out


class _Ctx:
    """What ``run_eval`` reads of a run context, for an evaluation outside any run directory."""

    config: dict[str, Any] = {"settings": {}}
    data_root = None

    def log_metrics(self, record: dict[str, Any]) -> None:
        pass

    def progress(self, done: int, total: int, label: str) -> None:
        pass


def random_genotype(k: int, primitives: tuple[str, ...]):
    import torch

    from lfm_nas.genotypes import derive_genotype, n_edges

    g = torch.Generator().manual_seed(k)
    alphas = {kind: torch.randn(n_edges(), len(primitives), generator=g) for kind in ("normal", "reduce")}
    return derive_genotype(alphas, primitives)


def random_cell_error(standin: str, k: int, results: Path) -> dict[str, Any]:
    """Test error of random cell ``k`` on ``standin`` (cached under ``results/random-cells``)."""
    import torch

    from lfm_nas.experiments import Table1
    from lfm_nas.genotypes import genotype_to_dict
    from lfm_nas.profiles import settings

    path = results / "random-cells" / f"{standin}-{k}.json"
    if path.exists():
        return json.loads(path.read_text())
    p = settings("cpu", {"standin": standin})
    genotype = random_genotype(k, tuple(p.search.primitives or ()))
    start = time.perf_counter()
    res = Table1().run_eval(genotype, {"dataset": standin, "eval": "cifar"}, 0, _Ctx(), p.search,
                            p.evaluation, torch.device("cpu"))
    out = {"cell": k, "genotype": genotype_to_dict(genotype), "test_err": res["test_err"],
           "wall_s": time.perf_counter() - start}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    return out


def summary(errors: list[float]) -> dict[str, Any]:
    return {"n": len(errors), "mean": statistics.fmean(errors) if errors else None,
            "std": statistics.stdev(errors) if len(errors) > 1 else None, "values": errors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--standins", default="digits,photo_patches")
    ap.add_argument("--seeds", default="0", help="table I seeds (comma-separated)")
    ap.add_argument("--random-cells", type=int, default=4)
    ap.add_argument("--results", type=Path, default=Path("/tmp/nasstd-spread"))
    ap.add_argument("--skip-table", action="store_true", help="use table I's finished runs only (run nothing)")
    ap.add_argument("--note", action="append", default=[], help="a line recorded with the results (repeatable)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    report: dict[str, Any] = {"profile": "cpu", "seeds": seeds, "random_cells": args.random_cells,
                              "machine": f"{platform.processor() or platform.machine()}, CPU, OMP_NUM_THREADS=1",
                              "commands": [shlex.join(["python", *sys.argv])], "notes": args.note, "standins": {}}
    for standin in args.standins.split(","):
        command = table_command(standin, args.seeds, args.results)
        report["commands"].append(shlex.join(command))
        if not args.skip_table:
            subprocess.run([sys.executable, "-m", "lfm_core.cli", *command[1:]], check=True)
        by_row = table_errors(args.results, standin, seeds)
        cells = [random_cell_error(standin, k, args.results) for k in range(args.random_cells)]
        methods = {row: summary([by_row[row][s] for s in sorted(by_row[row])]) for row in ROWS}
        methods[RANDOM] = summary([c["test_err"] for c in cells])
        means = [m["mean"] for m in methods.values() if m["mean"] is not None]
        report["standins"][standin] = {
            "methods": methods,
            "spread_of_method_means": max(means) - min(means) if means else None,
            "random_cell_std": methods[RANDOM]["std"],
            "random_cell_genotypes": [c["genotype"] for c in cells],
        }
    OUT.write_text(json.dumps(report, indent=1) + "\n")
    for standin, r in report["standins"].items():
        parts = [f"{name} {m['mean']:.2f}" + (f" ± {m['std']:.2f}" if m["std"] is not None else "") + f" (n={m['n']})"
                 for name, m in r["methods"].items() if m["mean"] is not None]
        print(f"{standin}: " + "; ".join(parts) + f"; spread {r['spread_of_method_means']:.2f}")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
