"""Sessions: tests, install_alone, reproduce, bench, bench_betty, bench_peers, bench_label_issues, lint.

``tests``, ``reproduce`` and ``bench`` share one development environment (``.nox/dev``) because
each fresh environment with torch costs minutes and gigabytes; ``install_alone`` builds one
fresh environment per package on purpose, since isolation is what it checks.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PACKAGES = ["lfm-core", "lfm-dr", "lfm-nas"]
CONSTRAINTS = ["-c", str(ROOT / "constraints.txt")]
TORCH = ["torch==2.14.1", "torchvision==0.29.1"]
DEV = ROOT / ".nox" / "dev"
# test tools of the shared environment (tensorboard: the --tracker test; scikit-image: the photos of
# the photo_patches stand-in, lfm-core's ``patches`` extra; submitit: the launcher, lfm-core's ``cluster`` extra;
# mypy: the type check of ``tests``, one major version so that a new release cannot break CI;
# pytest-xdist: the tests on two worker processes, see ``tests``)
PYTEST = ["pytest>=7", "pytest-xdist>=3.5"]  # every environment that runs tests: the shared one, install_alone's
DEV_TOOLS = [*PYTEST, "ruff", "tensorboard", "scikit-image>=0.23", "submitit>=1.5", "mypy>=2.4,<3"]
nox.options.sessions = ["tests", "install_alone", "reproduce"]
# two test processes (the tests are single-threaded, CI has two cores or more); each file's tests stay on
# one worker, so a module's fixtures are built once and the Slurm tests (all in tests/test_launch.py) never
# share the one-node Slurm with each other; LFM_TEST_WORKERS=0 runs them in this process
XDIST = ["-n", os.environ.get("LFM_TEST_WORKERS", "2"), "--dist", "loadfile"]
nox.options.reuse_existing_virtualenvs = True
# the test models are tiny: one intra-op thread avoids OpenMP stalls on a busy 2-core machine
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _bin(env: Path, name: str) -> str:
    return str(env / ("Scripts" if os.name == "nt" else "bin") / name)


def _dev_env(session: nox.Session) -> Path:
    """Create (once) the shared environment with torch pinned and every package editable."""
    marker = DEV / ".ready"
    if not marker.exists():
        shutil.rmtree(DEV, ignore_errors=True)
        session.run(sys.executable, "-m", "venv", str(DEV), external=True)
        pip = [_bin(DEV, "python"), "-m", "pip", "install", "-q", *CONSTRAINTS]
        session.run(*pip, *TORCH, external=True)
        editables = [arg for p in PACKAGES for arg in ("-e", str(ROOT / "packages" / p))]
        session.run(*pip, *editables, *DEV_TOOLS, external=True)
        marker.write_text("ok\n")
    else:  # entry points may have changed: refresh the editable installs cheaply
        editables = [arg for p in PACKAGES for arg in ("-e", str(ROOT / "packages" / p))]
        session.run(_bin(DEV, "python"), "-m", "pip", "install", "-q", "--no-deps", *editables, external=True)
        session.run(_bin(DEV, "python"), "-m", "pip", "install", "-q", *CONSTRAINTS, *DEV_TOOLS, external=True)
    return DEV


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """The type check (mypy.ini: lfm-core), then every package's tests and the cross-package tests,
    in the shared environment."""
    env = _dev_env(session)
    session.run(_bin(env, "python"), "-m", "mypy", "--config-file", str(ROOT / "mypy.ini"), external=True)
    paths = [str(ROOT / "packages" / p / "tests") for p in PACKAGES] + [str(ROOT / "tests")]
    session.run(_bin(env, "python"), "-m", "pytest", "-q", *XDIST, *paths, *session.posargs, external=True)


@nox.session(venv_backend="none")
def reproduce(session: nox.Session) -> None:
    """The smoke profile of every registered experiment, then the report; fails on anything missing."""
    env = _dev_env(session)
    out = Path(tempfile.mkdtemp(prefix="lfm-reproduce-"))
    session.run(_bin(env, "python"), str(ROOT / "tests" / "reproduce.py"), str(out), external=True)


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """Step-cost benchmarks; results in benchmarks/results/*.json and benchmarks/README.md."""
    env = _dev_env(session)
    session.run(_bin(env, "python"), str(ROOT / "benchmarks" / "step_cost.py"), "--json",
                "--write", str(ROOT / "benchmarks" / "results"), *session.posargs, external=True)


@nox.session(venv_backend="none")
def bench_betty(session: nox.Session) -> None:
    """lfm_core's solver against Betty on the same 3-level LFM-DR problem; benchmarks/results/betty.json."""
    env = _dev_env(session)
    # betty-ml declares an old Python range; the constraints keep it from touching torch
    session.run(_bin(env, "python"), "-m", "pip", "install", "-q", "--ignore-requires-python", *CONSTRAINTS,
                "betty-ml==0.2.1", external=True)
    session.run(_bin(env, "python"), str(ROOT / "benchmarks" / "betty_compare.py"),
                "--write", str(ROOT / "benchmarks" / "results"), *session.posargs, external=True)


@nox.session(venv_backend="none")
def bench_peers(session: nox.Session) -> None:
    """lfm_core's engines against Betty, TorchOpt and higher on one 3-level problem (MLP and ResNet-32 /
    ResNet-18 encoder); benchmarks/results/peers.json and the README block."""
    env = _dev_env(session)
    # the versions measured in benchmarks/README.md (plain `pip install betty-ml` resolves to 0.1.1:
    # 0.2.1 declares an old Python range); the constraints keep the peers from touching torch
    session.run(_bin(env, "python"), "-m", "pip", "install", "-q", "--ignore-requires-python", *CONSTRAINTS,
                "betty-ml==0.2.1", "torchopt==0.7.3", "higher==0.2.1", external=True)
    session.run(_bin(env, "python"), str(ROOT / "benchmarks" / "peers.py"), "--json",
                "--write", str(ROOT / "benchmarks" / "results"), *session.posargs, external=True)


@nox.session(venv_backend="none")
def bench_label_issues(session: nox.Session) -> None:
    """LFM's label-issue score against cleanlab's K-fold on an embedded stand-in with injected noise;
    benchmarks/results/label_issues_<data>.json. ``nox -s bench_label_issues -- --data photo_patches
    --seeds 1,2`` (default: digits, seed 0); ``-- --quick`` for two settings."""
    env = _dev_env(session)
    session.run(_bin(env, "python"), "-m", "pip", "install", "-q", *CONSTRAINTS, "cleanlab", external=True)
    session.run(_bin(env, "python"), str(ROOT / "benchmarks" / "label_issues.py"), "--json",
                "--write", str(ROOT / "benchmarks" / "results"), *session.posargs, external=True)


@nox.session(name="install_alone", venv_backend="none")
@nox.parametrize("package", PACKAGES)
def install_alone(session: nox.Session, package: str) -> None:
    """Each package in a fresh environment with only what it declares (lfm-dr without lfm-nas)."""
    env = Path(tempfile.mkdtemp(prefix=f"lfm-alone-{package}-"))
    try:
        session.run(sys.executable, "-m", "venv", str(env), external=True)
        pip = [_bin(env, "python"), "-m", "pip", "install", "-q", *CONSTRAINTS]
        session.run(*pip, *TORCH, external=True)
        wanted = ["lfm-core"] if package == "lfm-core" else ["lfm-core", package]
        session.run(*pip, *[str(ROOT / "packages" / p) for p in wanted], *PYTEST, external=True)
        py = _bin(env, "python")
        session.run(py, "-m", "pytest", "-q", *XDIST, str(ROOT / "packages" / package / "tests"), external=True)
        session.run(_bin(env, "lfm-bench"), "--help", external=True)
        session.run(_bin(env, "lfm-bench"), "list", external=True)
        if package == "lfm-dr":
            session.run(py, "-c", "import importlib.util, sys; import lfm_dr; "
                        "sys.exit(importlib.util.find_spec('lfm_nas') is not None)", external=True)
            session.run(_bin(env, "lfm-bench"), "run", "table7", "--profile", "smoke",
                        "--results", str(env / "results"), external=True)
    finally:
        shutil.rmtree(env, ignore_errors=True)


@nox.session(venv_backend="none")
def lint(session: nox.Session) -> None:
    env = _dev_env(session)
    session.run(_bin(env, "ruff"), "check", str(ROOT / "packages"), str(ROOT / "tests"),
                str(ROOT / "benchmarks"), str(ROOT / "noxfile.py"), external=True)
