"""`lfm-bench run --launcher local/slurm` and `--shard K/N`: the same runs, results and table as an
inline run, bit for bit; failures, preemption and concurrent launches (lfm_core.launch).

Table VII's smoke profile, its 2 cells x 2 seeds (seconds per run). The Slurm tests (marker
``slurm``, fixture ``slurm_cluster``: a tests/slurm_tools.SlurmCluster) need a live Slurm:
scripts/slurm-up.sh; the cluster-test tools' own tests are at the end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ARGS = ["run", "table7", "--profile", "smoke", "--seeds", "0,1"]


def cli(*args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "lfm_core.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


def runs(root: Path) -> dict[str, tuple[dict, dict]]:
    """Every finished run under ``root``: its directory -> (metrics, config)."""
    out = {}
    for path in root.rglob("result.json"):
        record = json.loads(path.read_text())
        out[str(path.parent.relative_to(root))] = (record["metrics"], record["config"])
    return out


def epochs(root: Path) -> dict[str, list[dict]]:
    """Every run's per-epoch records, without wall-clock times."""
    return {str(p.parent.relative_to(root)): [{k: v for k, v in json.loads(line).items() if k != "time_s"}
                                              for line in p.read_text().splitlines()]
            for p in root.rglob("metrics.jsonl")}


@pytest.fixture(scope="module")
def inline(tmp_path_factory) -> tuple[Path, str]:
    """The inline run every launcher must reproduce: its results root and printed table."""
    root = tmp_path_factory.mktemp("inline")
    proc = ok(cli(*ARGS, "--results", str(root)))
    assert len(runs(root)) == 4
    return root, proc.stdout


def test_local_workers_give_the_inline_results_and_table(inline, tmp_path):
    root = tmp_path / "results"
    proc = ok(cli(*ARGS, "--results", str(root), "--launcher", "local", "--jobs", "2"))
    assert runs(root) == runs(inline[0]) and epochs(root) == epochs(inline[0])
    assert proc.stdout == inline[1]
    assert "4 done, 0 running, 0 pending, 0 failed" in proc.stderr
    logs = sorted(p.name for p in (root / ".jobs").glob("*/*.log"))  # one task log per run, named by it
    assert len(logs) == 4 and all(name.endswith(("__seed0.log", "__seed1.log")) for name in logs)
    again = ok(cli(*ARGS, "--results", str(root), "--launcher", "local", "--jobs", "2"))
    assert again.stdout == inline[1] and "task(s)" not in again.stderr  # nothing left to launch
    assert again.stderr.count("cached:") == 4


def test_two_shards_together_are_the_inline_table(inline, tmp_path):
    root = tmp_path / "results"
    first = ok(cli(*ARGS, "--results", str(root), "--shard", "0/2"))
    assert "shard 0/2: 2 of the 4 runs" in first.stderr and len(runs(root)) == 2
    second = ok(cli(*ARGS, "--results", str(root), "--shard", "1/2"))
    assert runs(root) == runs(inline[0])
    assert second.stdout == inline[1]  # the whole table once both shards are done


def test_a_failed_local_task_does_not_stop_the_others_and_a_rerun_retries_only_it(inline, tmp_path):
    root = tmp_path / "results"
    # one run's checkpoint is garbage: that task fails, the three others finish
    configs = json.loads(ok(cli(*ARGS, "--results", str(root), "--print-config")).stdout)
    broken = Path(next(c["run_dir"] for c in configs if c["row"] == "LFM-DR" and c["seed"] == 1))
    broken.mkdir(parents=True)
    (broken / "checkpoint.pt").write_bytes(b"not a checkpoint")
    bad = cli(*ARGS, "--results", str(root), "--launcher", "local", "--jobs", "2")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    (failed,) = [line for line in bad.stderr.splitlines() if "failed:" in line]
    assert "LFM-DR | CIFAR-10 40% | seed 1: " in failed and "checkpoint" in failed and "(log: " in failed
    assert "retry: lfm-bench run table7" in failed
    log = Path(failed.split("(log: ")[1].split(")")[0])
    assert log.name.startswith("LFM-DR__") and log.name.endswith("__seed1.log") and "checkpoint" in log.read_text()
    assert "1 run(s) failed" in bad.stderr.strip().splitlines()[-1]
    assert len(runs(root)) == 3
    (broken / "checkpoint.pt").unlink()
    again = ok(cli(*ARGS, "--results", str(root), "--launcher", "local", "--jobs", "2"))
    assert "1 task(s)" in again.stderr and again.stderr.count("cached:") == 3
    assert runs(root) == runs(inline[0]) and again.stdout == inline[1]


def test_a_resumed_run_says_where_on_the_terminal(tmp_path):
    args = ["run", "table7", "--profile", "smoke", "--methods", "LFM-DR", "--seeds", "0", "--results", str(tmp_path)]
    stopped = cli(*args, env={"LFM_TEST_STOP_AT": "dr:1:2:end"})
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    resumed = ok(cli(*args))
    assert "LFM-DR | CIFAR-10 40% | seed 0: resumed at epoch 1 step 3" in resumed.stderr


@pytest.mark.parametrize("args, words", [
    (["--launcher", "cloud"], ["unknown --launcher 'cloud'", "inline, local, slurm"]),
    (["--shard", "3/2"], ["bad --shard '3/2'", "K/N"]),
    (["--shard", "a/b"], ["bad --shard 'a/b'", "K/N"]),
    (["--launcher", "local", "--jobs", "0"], ["bad --jobs 0", ">= 1"]),
    (["--jobs", "2"], ["--jobs applies to --launcher local"]),
    (["--launcher", "local", "--partition", "gpu"], ["--partition applies to --launcher slurm"]),
    (["--launcher", "slurm", "--slurm-arg", "account"], ["bad --slurm-arg 'account'", "KEY=VALUE"]),
])
def test_bad_launch_options_are_one_line(args, words, tmp_path):
    proc = cli(*ARGS, "--results", str(tmp_path / "r"), *args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    for w in words:
        assert w in line, (w, line)
    assert not (tmp_path / "r").exists()


def test_slurm_without_submitit_names_the_install_command(tmp_path):
    code = ("import sys; sys.modules['submitit'] = None\n"  # `import submitit` now fails
            "from lfm_core.cli import main; main()")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code, *ARGS, "--results", str(tmp_path), "--launcher", "slurm"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "pip install 'lfm-core[cluster]'" in proc.stderr.strip().splitlines()[-1]


# ----------------------------------------------------------------------------------------------
# Slurm (a real one: scripts/slurm-up.sh)
# ----------------------------------------------------------------------------------------------
def job_id_of(stderr: str) -> str:
    (line,) = [line for line in stderr.splitlines() if line.startswith("submitted Slurm job ")]
    return line.split()[3].rstrip(":")


def start_pending_now(job: str) -> None:
    """Skip the begin-time delay of requeued tasks (this test cluster only)."""
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True, timeout=30)


@pytest.mark.slurm
def test_slurm_array_gives_the_inline_results_and_table(slurm_cluster, inline, tmp_path):
    root = tmp_path / "results"
    proc = ok(cli(*ARGS, "--results", str(root), "--launcher", "slurm", "--partition", slurm_cluster.partition,
                  "--time-min", "10", "--slurm-arg", "comment=lfm-test"))
    assert runs(root) == runs(inline[0]) and epochs(root) == epochs(inline[0])
    assert proc.stdout == inline[1]
    job = job_id_of(proc.stderr)
    assert "4 task(s)" in proc.stderr and "4 done, 0 running, 0 pending, 0 failed" in proc.stderr
    logs = sorted((root / ".jobs" / job).glob("*__seed*.log"))  # one task log per run, named by it
    assert len(logs) == 4 and all("submitit INFO" in p.read_text() for p in logs)
    script = (root / ".jobs" / job / f"{job}_submission.sh").read_text()
    assert "#SBATCH --array=0-3%4" in script and "#SBATCH --comment=lfm-test" in script and "--time=10" in script
    again = ok(cli(*ARGS, "--results", str(root), "--launcher", "slurm"))  # nothing left: no job, the same table
    assert "submitted" not in again.stderr and again.stdout == inline[1]


@pytest.mark.slurm
def test_slurm_no_wait_returns_and_the_same_command_watches_the_job_then_prints(slurm_cluster, inline, tmp_path):
    root = tmp_path / "results"
    args = [*ARGS, "--results", str(root), "--launcher", "slurm", "--only", "Base Model"]
    # the job may begin in 20 s only: it is surely still pending when the second command looks
    proc = ok(cli(*args, "--no-wait", "--slurm-arg", "begin=now+20"))
    job = job_id_of(proc.stderr)
    slurm_cluster.track(job)  # cancelled if the test fails before it ends
    assert proc.stdout == "" and f"squeue -j {job}" in proc.stderr and "the same command prints the table" in proc.stderr
    watched = ok(cli(*args))  # not submitted again: it watches the earlier job to its end
    assert f"2 run(s) are in Slurm job {job} of an earlier launch" in watched.stderr
    assert "submitted" not in watched.stderr and "2 done, 0 running, 0 pending, 0 failed" in watched.stderr
    expected = {k: v for k, v in runs(inline[0]).items() if k.split("/")[-2].startswith("Base_Model")}
    base_line = next(line for line in inline[1].splitlines() if line.startswith("| Base Model |"))
    assert runs(root) == expected and base_line in watched.stdout.splitlines()
    again = ok(cli(*args))
    assert "Slurm job" not in again.stderr and again.stderr.count("cached:") == 2 and again.stdout == watched.stdout


@pytest.mark.slurm
def test_a_failed_slurm_task_is_one_line_and_a_rerun_submits_only_it(slurm_cluster, inline, tmp_path):
    root = tmp_path / "results"
    configs = json.loads(ok(cli(*ARGS, "--results", str(root), "--print-config")).stdout)
    broken = Path(next(c["run_dir"] for c in configs if c["row"] == "LFM-DR" and c["seed"] == 0))
    broken.mkdir(parents=True)
    (broken / "checkpoint.pt").write_bytes(b"not a checkpoint")
    bad = cli(*ARGS, "--results", str(root), "--launcher", "slurm")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr, bad.stderr[-3000:]
    (failed,) = [line for line in bad.stderr.splitlines() if "failed:" in line]
    assert "LFM-DR | CIFAR-10 40% | seed 0: " in failed and "checkpoint" in failed and "retry: lfm-bench run" in failed
    log = Path(failed.split("(log: ")[1].split(")")[0])
    assert log.name.endswith("__seed0.log") and "checkpoint" in log.read_text()
    assert len(runs(root)) == 3
    (broken / "checkpoint.pt").unlink()
    again = ok(cli(*ARGS, "--results", str(root), "--launcher", "slurm"))
    assert "1 task(s)" in again.stderr and again.stderr.count("cached:") == 3
    assert runs(root) == runs(inline[0]) and again.stdout == inline[1]


PREEMPT = ["run", "table7", "--profile", "smoke", "--methods", "LFM-DR", "--epochs", "6", "--seeds", "0,1"]


@pytest.mark.slurm
def test_slurm_tasks_signalled_mid_run_are_requeued_and_resume_to_the_uninterrupted_result(slurm_cluster, tmp_path):
    reference = tmp_path / "reference"
    ok(cli(*PREEMPT, "--results", str(reference)))
    root = tmp_path / "results"
    err = tmp_path / "parent.err"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    with open(err, "w") as fh:
        parent = subprocess.Popen([sys.executable, "-m", "lfm_core.cli", *PREEMPT, "--results", str(root),
                                   "--launcher", "slurm"], stdout=subprocess.PIPE, stderr=fh, text=True, env=env)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and "submitted Slurm job" not in err.read_text():
            time.sleep(0.2)
        job = job_id_of(err.read_text())
        slurm_cluster.track(job)
        # task 0 gets submitit's preemption signal, task 1 SIGTERM, each after its first epoch
        for task, sig in ((0, "USR2"), (1, "TERM")):
            while time.time() < deadline and not list(root.glob(f"table7/smoke/*/seed{task}/checkpoint.pt")):
                time.sleep(0.1)
            subprocess.run(["scancel", f"--signal={sig}", f"{job}_{task}"], check=True, timeout=30)
        while parent.poll() is None and time.time() < deadline:
            start_pending_now(job)  # requeued tasks begin without the scheduler's delay
            time.sleep(1)
        out, _ = parent.communicate(timeout=max(1, deadline - time.time()))
    finally:
        if parent.poll() is None:
            parent.kill()
    stderr = err.read_text()
    assert parent.returncode == 0 and "Traceback" not in stderr, stderr[-3000:]
    assert runs(root) == runs(reference) and epochs(root) == epochs(reference)
    for task in (0, 1):
        log = next((root / ".jobs" / job).glob(f"*__seed{task}.log")).read_text()
        assert "requeueing the task" in log and "Requeued job" in log and "resumed at epoch" in log
        assert f"LFM-DR | CIFAR-10 40% | seed {task}: resumed at epoch" in stderr  # the terminal says so too
    assert out == ok(cli(*PREEMPT, "--results", str(reference))).stdout


@pytest.mark.slurm
def test_two_concurrent_slurm_launches_compute_each_run_once(slurm_cluster, inline, tmp_path):
    root = tmp_path / "results"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    # one task of each at a time: both arrays take the runs in the same order, at the same time
    command = [sys.executable, "-m", "lfm_core.cli", *ARGS, "--results", str(root), "--launcher", "slurm",
               "--max-parallel", "1"]
    launches = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in launches]
    for proc, (out, err) in zip(launches, outputs):
        assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]
        assert out == inline[1]  # both end with the full table
    assert runs(root) == runs(inline[0])
    for log in root.rglob("log.txt"):  # each run computed exactly once
        assert log.read_text().count("] start table7") == 1, log.read_text()
    for _, err in outputs:  # each launch accounts for every run: ran, cached, or watched in the other's job
        lines = [line for line in err.splitlines() if line.startswith(("  ran: ", "  cached: "))]
        assert len({line.split(": ")[1] for line in lines}) == 4, lines


@pytest.mark.slurm
def test_a_slurm_task_at_its_time_limit_is_requeued_and_resumes_to_the_uninterrupted_result(slurm_cluster, tmp_path):
    # Slurm itself signals the task 15 s before its 1-minute limit (lfm_core.launch.signal_delay_s):
    # the run must outlast 45 s, so the reference run's epochs grow until it takes a minute here
    base = ["run", "table7", "--profile", "smoke", "--methods", "LFM-DR", "--seeds", "0"]
    n_epochs = 40
    for attempt in range(3):
        reference = tmp_path / f"reference{attempt}"
        ok(cli(*base, "--epochs", str(n_epochs), "--results", str(reference)))
        (result,) = reference.rglob("result.json")
        wall = json.loads(result.read_text())["wall_s"]
        if wall >= 60:
            break
        n_epochs = min(2000, math.ceil(n_epochs * 80 / max(wall, 1.0)))
    assert wall >= 60, f"the reference run took {wall:.0f} s at most; it must outlast the 45 s before the signal"
    args = [*base, "--epochs", str(n_epochs)]
    root = tmp_path / "results"
    proc = cli(*args, "--results", str(root), "--launcher", "slurm", "--time-min", "1", timeout=900)
    job = job_id_of(proc.stderr)
    slurm_cluster.track(job)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    log = next((root / ".jobs" / job).glob("*__seed0.log")).read_text()
    assert "this job is timed-out" in log and "resumed at epoch" in log, log[-3000:]
    assert runs(root) == runs(reference) and epochs(root) == epochs(reference)

# The cluster-test tools themselves (tests/slurm_tools.py) against the live Slurm of this machine. They
# live in this file so that pytest-xdist (--dist loadfile) keeps every test of the one-node Slurm on
# one worker.


@pytest.mark.slurm
def test_array_runs_every_task_and_sacct_records_them(slurm_cluster, tmp_path):
    job = slurm_cluster.sbatch("--wait", "--array=0-1", f"--output={tmp_path}/%a.out",
                               "--wrap", "echo task=$SLURM_ARRAY_TASK_ID")
    assert sorted(p.read_text() for p in tmp_path.glob("*.out")) == ["task=0\n", "task=1\n"]
    for task in (f"{job}_0", f"{job}_1"):
        assert slurm_cluster.wait_state(task, "COMPLETED", timeout=30) == "COMPLETED"


@pytest.mark.slurm
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
