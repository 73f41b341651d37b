"""The cluster-test tools against the live Slurm of this machine (bash scripts/slurm-up.sh)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm


def test_array_runs_every_task_and_sacct_records_them(slurm_cluster, tmp_path):
    job = slurm_cluster.sbatch("--wait", "--array=0-1", f"--output={tmp_path}/%a.out",
                               "--wrap", "echo task=$SLURM_ARRAY_TASK_ID")
    assert sorted(p.read_text() for p in tmp_path.glob("*.out")) == ["task=0\n", "task=1\n"]
    for task in (f"{job}_0", f"{job}_1"):
        assert slurm_cluster.wait_state(task, "COMPLETED", timeout=30) == "COMPLETED"


def test_a_signalled_task_requeues_itself_and_runs_again_within_a_minute(slurm_cluster, tmp_path):
    log = tmp_path / "log"
    script = tmp_path / "job.sh"
    script.write_text(f"""#!/bin/bash
trap 'scontrol requeue ${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}; exit 0' USR2
echo "start ${{SLURM_RESTART_COUNT:-0}}" >> {log}
if [ "${{SLURM_RESTART_COUNT:-0}}" = 0 ]; then sleep 300 & wait; fi
""")
    task = slurm_cluster.sbatch("--requeue", "--array=0", "--output=/dev/null", str(script)) + "_0"
    slurm_cluster.wait_state(task, "RUNNING")
    deadline = time.monotonic() + 30
    while not (log.exists() and log.read_text()):  # the trap is set once the script logged
        assert time.monotonic() < deadline, "the job never started its script"
        time.sleep(0.2)
    start = time.monotonic()
    slurm_cluster.signal(task, "USR2", batch=True)
    slurm_cluster.wait_requeued(task)
    slurm_cluster.wait_state(task, "COMPLETED", timeout=120)
    assert log.read_text() == "start 0\nstart 1\n"
    assert slurm_cluster.restarts(task) == 1
    assert time.monotonic() - start < 60, "requeue slower than a minute: is AuthInfo=cred_expire set?"


@pytest.mark.parametrize("ci", ["true", None])
def test_without_slurm_ci_fails_loudly_and_a_plain_run_skips(ci):
    # no marker check of our own here: this test needs no Slurm
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PATH"] = str(Path(sys.executable).parent)  # no sinfo on it
    if ci:
        env["CI"] = ci
    node = f"{__file__}::test_array_runs_every_task_and_sacct_records_them"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", node],
                          capture_output=True, text=True, timeout=120, env=env, cwd=Path(__file__).parent)
    out = proc.stdout + proc.stderr
    assert "Slurm is not up: run scripts/slurm-up.sh (sinfo not found)" in out, out
    if ci:
        assert proc.returncode == 1 and "1 error" in out, out
    else:
        assert proc.returncode == 0 and "1 skipped" in out, out
