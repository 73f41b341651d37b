"""Helpers for tests against a real Slurm (``bash scripts/slurm-up.sh`` starts a one-node one).

The ``slurm_cluster`` fixture (tests/conftest.py) hands out a :class:`SlurmCluster`; tests marked
``@pytest.mark.slurm`` skip when no Slurm answers, and fail loudly under ``CI=true``.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass, field

NOT_UP = "Slurm is not up: run scripts/slurm-up.sh"
# sinfo node states that can take jobs (sinfo appends flags such as * ~ # ! % $ @ ^ -)
USABLE = {"idle", "mixed", "allocated", "completing"}
# job states after which a job does not run again by itself
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def _run(*cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def slurm_problem() -> str | None:
    """Why this machine's Slurm cannot take jobs (one line), or None when it can.

    Checks that ``sinfo`` answers with a usable node and that ``sacct`` works (submitit polls
    job states with it, so a Slurm without accounting is not enough).
    """
    try:
        nodes = _run("sinfo", "-h", "-N", "-o", "%N %T", timeout=20)
        if nodes.returncode:
            return f"sinfo failed: {nodes.stderr.strip() or nodes.returncode}"
        states = [line.split()[1] for line in nodes.stdout.splitlines() if len(line.split()) == 2]
        if not any(s.rstrip("*~#!%$@^-") in USABLE for s in states):
            return f"no node can take jobs (sinfo: {', '.join(states) or 'no nodes'})"
        acct = _run("sacct", "-n", "-X", "-S", "now", timeout=20)
        if acct.returncode:
            return f"sacct failed (accounting off?): {acct.stderr.strip() or acct.returncode}"
    except FileNotFoundError as exc:
        return f"{exc.filename} not found"
    except subprocess.TimeoutExpired as exc:
        return f"{exc.cmd[0]} did not answer within {exc.timeout:.0f} s"
    return None


@dataclass
class SlurmCluster:
    """A live Slurm: submit, watch, signal and clean up jobs. Job ids are strings ("12", "12_3")."""

    jobs: list[str] = field(default_factory=list)

    @property
    def partition(self) -> str:
        """The default partition (the first one that is up)."""
        proc = _run("sinfo", "-h", "-o", "%P %a")
        up = [line.split()[0] for line in proc.stdout.splitlines() if line.split()[1:] == ["up"]]
        default = [p.rstrip("*") for p in up if p.endswith("*")]
        assert up, f"no partition is up (sinfo: {proc.stderr.strip()})"
        return (default or [up[0].rstrip("*")])[0]

    def sbatch(self, *args: str, timeout: float = 300) -> str:
        """Submit with ``sbatch --parsable ARGS``; returns the job id and cancels it at teardown.

        TIMEOUT bounds ``sbatch --wait``: other users' jobs may hold the node's CPUs for a while.
        """
        proc = _run("sbatch", "--parsable", *args, timeout=timeout)
        assert proc.returncode == 0, f"sbatch {' '.join(args)} failed: {proc.stderr.strip()}"
        job = proc.stdout.strip().split(";")[0]
        self.track(job)
        return job

    def track(self, job: str) -> None:
        """Cancel JOB (e.g. one submitit submitted) when the test ends, should it still be there."""
        self.jobs.append(str(job))

    def cancel_all(self) -> None:
        if self.jobs:
            _run("scancel", *self.jobs)

    def state(self, job: str) -> str:
        """The current state of a job or array task ("12_3"): squeue while Slurm holds it, else sacct.

        An array job id alone names its first listed task. "" when Slurm does not know it (yet).
        """
        live = _run("squeue", "-h", "--states=all", "-j", job, "-o", "%T")
        if live.returncode == 0 and live.stdout.split():
            return live.stdout.split()[0]
        past = _run("sacct", "-n", "-X", "-P", "-j", job, "-o", "State")
        lines = past.stdout.split() if past.returncode == 0 else []
        return lines[-1].split()[0] if lines else ""  # the last record: after a requeue, the newest run

    def restarts(self, job: str) -> int:
        """How often Slurm requeued this job or task (scontrol's Restarts)."""
        proc = _run("scontrol", "show", "job", "-o", job)
        found = re.search(r"\bRestarts=(\d+)", proc.stdout)
        assert found, f"scontrol knows no job {job}: {proc.stderr.strip()}"
        return int(found.group(1))

    def wait_state(self, job: str, *states: str, timeout: float = 120) -> str:
        """Wait until JOB is in one of STATES and return it; fail on timeout or another final state."""
        wanted = {s.upper() for s in states}
        end = time.monotonic() + timeout
        while True:
            now = self.state(job)
            if now in wanted:
                return now
            assert now not in FINAL, f"job {job} ended {now}, waiting for {'/'.join(sorted(wanted))}"
            assert time.monotonic() < end, f"job {job} still {now or 'unknown'} after {timeout:.0f} s"
            time.sleep(0.5)

    def signal(self, job: str, sig: str = "USR2", batch: bool = False) -> None:
        """Send SIG to a running job or array task ("12_3").

        By default the signal reaches the job's steps: the processes started with ``srun``, which
        is how submitit runs its worker. ``batch=True`` sends it to the batch script's shell instead
        (for an ``sbatch --wrap`` job without srun).
        """
        proc = _run("scancel", f"--signal={sig}", *(["--batch"] if batch else []), job)
        assert proc.returncode == 0, f"scancel --signal={sig} {job} failed: {proc.stderr.strip()}"

    def wait_requeued(self, job: str, restarts: int = 1, timeout: float = 120) -> None:
        """Wait until Slurm has requeued JOB RESTARTS times in all.

        The requeued job then waits the credential lifetime before it may run again: ~5 s on a
        Slurm from scripts/slurm-up.sh, 120 s plus a scheduling pass (~2.5 min) on a default one.
        Forcing it earlier (``scontrol update JobId=.. StartTime=now``) makes Slurm fail the job
        ("Job credential revoked"), so there is no shortcut here.
        """
        end = time.monotonic() + timeout
        while self.restarts(job) < restarts:
            state = self.state(job)
            assert state not in FINAL, f"job {job} ended {state} without being requeued"
            assert time.monotonic() < end, f"job {job} not requeued after {timeout:.0f} s"
            time.sleep(0.5)
