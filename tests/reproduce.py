"""`nox -s reproduce`: the smoke profile of every registered experiment, then the report.

Fails (non-zero exit) if an experiment is missing, a run fails, or a table/figure is not written.
Usage: python tests/reproduce.py OUT_DIR
"""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lfm_core.experiments import get_experiment
from lfm_core.registries import EXPERIMENTS

CLI = [sys.executable, "-m", "lfm_core.cli"]  # the environment running this script, activated or not
EXPECTED = [f"table{i}" for i in range(1, 11)] + [f"figure{i}" for i in range(4, 9)]


def main(out: Path) -> int:
    names = EXPERIMENTS.names()
    missing = [n for n in EXPECTED if n not in names]
    if missing:
        print(f"missing experiments: {', '.join(missing)}", file=sys.stderr)
        return 1
    results, report = out / "results", out / "report"
    # one lane per package, side by side: a package's experiments share cached work (the NAS searches),
    # so each lane runs its own one after the other
    lanes: dict[str, list[str]] = {}
    for name in names:
        lanes.setdefault(get_experiment(name).package, []).append(name)

    def run_lane(lane: list[str]) -> str | None:
        for name in lane:
            start = time.perf_counter()
            cmd = [*CLI, "run", name, "--profile", "smoke", "--results", str(results)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            print(f"{name}: exit {proc.returncode} in {time.perf_counter() - start:.0f}s", flush=True)
            if proc.returncode != 0:
                return f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return None

    with ThreadPoolExecutor(max_workers=len(lanes)) as pool:
        failures = [f for f in pool.map(run_lane, lanes.values()) if f is not None]
    if failures:
        print("\n".join(failures), file=sys.stderr)
        return 1
    proc = subprocess.run([*CLI, "report", "--results", str(results), "--out", str(report)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return 1
    expected_files = [report / f"{n}.{ext}" for n in names for ext in ("md", "csv", "tex")]
    expected_files += [report / f"{n}.png" for n in names if get_experiment(n).kind == "figure"]
    expected_files.append(report / "claims.md")
    expected_files.append(report / "README.md")
    absent = [str(p) for p in expected_files if not p.exists() or p.stat().st_size == 0]
    if absent:
        print("report is missing: " + ", ".join(absent), file=sys.stderr)
        return 1
    print(f"reproduce: {len(names)} experiments, {len(expected_files)} report files in {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
