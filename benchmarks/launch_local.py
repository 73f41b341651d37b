"""Wall time of one table inline vs ``--launcher local --jobs N`` on this machine.

Runs ``lfm-bench run EXP ARGS`` twice into two fresh results folders, once inline and once with
``--launcher local --jobs N``, checks that every run's metrics and the printed table are equal,
and records both wall times with the machine's load average (the 1-minute figure before and
after each run: other processes on a shared machine slow both runs and blur the speed-up).

    python benchmarks/launch_local.py [--jobs 2] [--write benchmarks/results] [-- table7 --profile cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lfm_core.io import atomic_write_text


def timed(command: list[str]) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return {"wall_s": round(wall, 1), "load_1min_before": round(load_before, 2),
            "load_1min_after": round(os.getloadavg()[0], 2), "stdout": proc.stdout}


def metrics(root: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(root)): json.loads(p.read_text())["metrics"] for p in root.rglob("result.json")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--write", type=Path, default=None, help="folder for launch_local.json")
    parser.add_argument("run_args", nargs="*", default=["table7", "--profile", "cpu"],
                        help="what to run (after --), default: table7 --profile cpu")
    args = parser.parse_args(argv)
    cli = [sys.executable, "-m", "lfm_core.cli", "run", *args.run_args]
    with tempfile.TemporaryDirectory() as tmp:
        inline_root, local_root = Path(tmp) / "inline", Path(tmp) / "local"
        inline = timed([*cli, "--results", str(inline_root)])
        local = timed([*cli, "--results", str(local_root), "--launcher", "local", "--jobs", str(args.jobs)])
        same_metrics = metrics(inline_root) == metrics(local_root)
        runs = len(metrics(inline_root))
    record = {
        "command": "lfm-bench run " + " ".join(args.run_args), "runs": runs, "jobs": args.jobs,
        "inline": {k: v for k, v in inline.items() if k != "stdout"},
        "local": {k: v for k, v in local.items() if k != "stdout"},
        "speedup": round(inline["wall_s"] / local["wall_s"], 2),
        "same_metrics": same_metrics, "same_table": inline["stdout"] == local["stdout"],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()},
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(record, indent=2))
    if args.write:
        args.write.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.write / "launch_local.json", json.dumps(record, indent=2) + "\n")
    return 0 if same_metrics and record["same_table"] else 1


if __name__ == "__main__":
    sys.exit(main())
