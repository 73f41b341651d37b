"""Root-test fixtures: a live Slurm for the cluster tests (marker ``slurm``, fixture ``slurm_cluster``)."""

from __future__ import annotations

import functools
import os

import pytest
from slurm_tools import NOT_UP, SlurmCluster, slurm_problem


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slurm: needs a live Slurm (bash scripts/slurm-up.sh); fails under CI=true without one")


@functools.cache
def _problem() -> str | None:
    return slurm_problem()


def require_slurm() -> None:
    """Skip the test when no Slurm answers; under CI=true, where scripts/slurm-up.sh ran, fail it."""
    problem = _problem()
    if problem is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{NOT_UP} ({problem})", pytrace=False)
    pytest.skip(f"{NOT_UP} ({problem})")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("slurm") is not None:
        require_slurm()


@pytest.fixture
def slurm_cluster():
    """The live Slurm of this machine; jobs submitted through it are cancelled when the test ends."""
    require_slurm()
    cluster = SlurmCluster()
    yield cluster
    cluster.cancel_all()
