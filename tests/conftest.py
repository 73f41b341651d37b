"""Fixtures shared by the root tests.

``slurm_cluster``: a running Slurm (e.g. the one-node cluster of scripts/slurm-up.sh); tests that
use it are marked ``slurm`` and skipped where ``sinfo`` does not answer."""

from __future__ import annotations

import shutil
import subprocess

import pytest


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "slurm: needs a running Slurm (bash scripts/slurm-up.sh starts one here)")


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """The name of the partition to submit to; skips the test when no Slurm answers."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        pytest.skip("no Slurm here (bash scripts/slurm-up.sh starts a one-node cluster)")
    proc = subprocess.run(["sinfo", "-h", "-o", "%P %a"], capture_output=True, text=True, timeout=30)
    up = [line.split()[0].rstrip("*") for line in proc.stdout.splitlines() if line.split()[1:] == ["up"]]
    if proc.returncode != 0 or not up:
        pytest.skip(f"Slurm does not answer (sinfo: {proc.stderr.strip() or 'no partition up'})")
    return up[0]
