"""Run a table's (cell, seed) runs as separate tasks: on worker processes of this machine
(``--launcher local``), as one Slurm job array through submitit (``--launcher slurm``), or only
this process's share of them (``--shard K/N``, for any other scheduler).

The unit of work is a :class:`RunTask`: a picklable call of ``lfm_core.runner.run_one`` that the
worker re-imports by the experiment's name. The parent resolves every run's configuration as an
inline run does, skips finished runs, launches the rest, shows their progress and at the end
prints the table an inline run prints (``lfm_core.cli``).

Preemption and time limits: inside a task, submitit's signal (USR2) and SIGTERM stop the run at
its next step boundary with its position saved (``lfm_core.stopping``), then the task is requeued
through submitit's checkpoint mechanism (``RunTask.checkpoint``) and resumes from that position.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import shlex
import shutil
import signal
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import click

from lfm_core.errors import GracefulStop, LFMError, UsageError, check_choice

LAUNCHERS = ("inline", "local", "slurm")
JOBS_DIR = ".jobs"  # <results>/.jobs/<job id>/: the tasks' logs (and submitit's files)
MAX_TIMEOUTS = 20  # requeues of one task after its time limit (preemptions do not count)
LOCK_POLL_S = 2.0  # how often a task waits for a run that another live task holds
CLUSTER_INSTALL = "pip install 'lfm-core[cluster]'"


# ------------------------------------------------------------------------------------------
# options
# ------------------------------------------------------------------------------------------
LAUNCH_OPTIONS = [
    click.Option(["--launcher"], default="inline", show_default=True, metavar="[inline|local|slurm]",
                 help="inline: every run in this process, one after the other; local: --jobs worker processes "
                      "on this machine (one GPU each when there are GPUs); slurm: one Slurm job array, one task "
                      "per cell and seed (needs lfm-core[cluster])."),
    click.Option(["--shard"], default=None, metavar="K/N",
                 help="Run only this process's share (K of N, 0-based) of the runs; the N shards together are "
                      "the whole table (for a hand-written array on PBS, LSF, Kubernetes...)."),
    click.Option(["--jobs"], type=int, default=None, help="--launcher local: worker processes at once [default: 1]."),
    click.Option(["--max-parallel"], type=int, default=None,
                 help="--launcher slurm: tasks of the array running at once [default: all]."),
    click.Option(["--no-wait"], is_flag=True,
                 help="--launcher slurm: submit and return; rerun the same command later for the table."),
    click.Option(["--partition"], default=None, help="--launcher slurm: the partition to submit to."),
    click.Option(["--gpus-per-task"], type=int, default=None, help="--launcher slurm: GPUs of each task [default: 0]."),
    click.Option(["--cpus-per-task"], type=int, default=None,
                 help="local and slurm: CPU cores (and intra-op threads, OMP_NUM_THREADS) of each task [default: 1]."),
    click.Option(["--mem-gb"], type=float, default=None, help="--launcher slurm: memory of each task in GB."),
    click.Option(["--time-min"], type=int, default=None,
                 help="--launcher slurm: time limit of each task in minutes (a task stopped by it is requeued "
                      "and resumes) [default: 60]."),
    click.Option(["--slurm-arg", "slurm_args"], multiple=True, metavar="KEY=VALUE",
                 help="--launcher slurm: any other sbatch option (repeatable), e.g. --slurm-arg account=proj."),
    click.Option(["--setup", "setup"], multiple=True, metavar="LINE",
                 help="--launcher slurm: a shell line each task runs first (repeatable), e.g. "
                      "--setup 'module load cuda' --setup 'source venv/bin/activate'."),
]
LAUNCH_KEYS = ("launcher", "shard", "jobs", "max_parallel", "no_wait", "partition", "gpus_per_task", "cpus_per_task",
               "mem_gb", "time_min", "slurm_args", "setup")
SLURM_ONLY = ("max_parallel", "no_wait", "partition", "gpus_per_task", "mem_gb", "time_min", "slurm_args", "setup")


@dataclass(frozen=True)
class LaunchOptions:
    """How the runs of one command are launched (the ``--launcher`` family of options)."""

    launcher: str = "inline"
    shard: tuple[int, int] | None = None
    jobs: int = 1
    max_parallel: int | None = None
    no_wait: bool = False
    partition: str | None = None
    gpus_per_task: int = 0
    cpus_per_task: int = 1
    mem_gb: float | None = None
    time_min: int = 60
    slurm_args: dict[str, str] = field(default_factory=dict)
    setup: tuple[str, ...] = ()


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    k, sep, n = text.partition("/")
    try:
        index, count = int(k), int(n)
    except ValueError:
        index, count = -1, 0
    if not sep or count < 1 or not 0 <= index < count:
        raise UsageError(f"bad --shard {text!r}: expected K/N with 0 <= K < N, e.g. 0/4 (shards 0/4 .. 3/4)")
    return index, count


def launch_options(kw: dict[str, Any]) -> LaunchOptions:
    """Pop the launch options out of the command's keyword arguments and check them (one line each)."""
    values = {k: kw.pop(k, None) for k in LAUNCH_KEYS}
    launcher = check_choice("--launcher", values["launcher"] or "inline", LAUNCHERS)
    for key in SLURM_ONLY:
        if launcher != "slurm" and values[key] not in (None, False, ()):
            raise UsageError(f"--{key.replace('_', '-')} applies to --launcher slurm (not {launcher})")
    if launcher != "local" and values["jobs"] is not None:
        raise UsageError(f"--jobs applies to --launcher local (not {launcher}); --launcher slurm takes --max-parallel")
    if launcher == "inline" and values["cpus_per_task"] is not None:
        raise UsageError("--cpus-per-task applies to --launcher local or slurm (not inline)")
    for key in ("jobs", "max_parallel", "cpus_per_task", "time_min"):
        if values[key] is not None and values[key] < 1:
            raise UsageError(f"bad --{key.replace('_', '-')} {values[key]}: expected an integer >= 1")
    if values["gpus_per_task"] is not None and values["gpus_per_task"] < 0:
        raise UsageError(f"bad --gpus-per-task {values['gpus_per_task']}: expected an integer >= 0")
    if values["mem_gb"] is not None and not values["mem_gb"] > 0:
        raise UsageError(f"bad --mem-gb {values['mem_gb']}: expected a positive number of GB")
    slurm_args = {}
    for item in values["slurm_args"] or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"bad --slurm-arg {item!r}: expected KEY=VALUE, e.g. --slurm-arg account=myproject")
        slurm_args[key.strip().lstrip("-")] = value
    return LaunchOptions(
        launcher=launcher, shard=parse_shard(values["shard"]), jobs=values["jobs"] or 1,
        max_parallel=values["max_parallel"], no_wait=bool(values["no_wait"]), partition=values["partition"],
        gpus_per_task=values["gpus_per_task"] or 0, cpus_per_task=values["cpus_per_task"] or 1,
        mem_gb=values["mem_gb"], time_min=values["time_min"] or 60, slurm_args=slurm_args,
        setup=tuple(values["setup"] or ()),
    )


def shard_of(items: list, shard: tuple[int, int] | None) -> list:
    """Shard K of N: every N-th item from the K-th, by position in the whole table's list (so
    the share does not depend on what other shards have finished)."""
    if shard is None:
        return list(items)
    k, n = shard
    return items[k::n]


def import_submitit():
    try:
        import submitit
    except ImportError:
        raise LFMError(f"--launcher slurm needs submitit: {CLUSTER_INSTALL}") from None
    return submitit


# ------------------------------------------------------------------------------------------
# the task (what runs on a worker)
# ------------------------------------------------------------------------------------------
class _Signalled(BaseException):
    """A preemption signal outside a training loop's safe points: the task ends now and resumes
    from the run's last checkpoint."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


@dataclass(frozen=True)
class RunTask:
    """One run (cell x seed) as a picklable callable: ``task()`` runs (or resumes, or reuses) it
    with ``run_one`` in the worker and returns a short summary. A run that another live task
    holds is waited for, with one line, then reused."""

    experiment: str
    cell: Any  # lfm_core.experiments.Cell
    profile: str
    seed: int
    results: str
    options: dict[str, Any]
    runtime: dict[str, Any]  # data_root, device, mixed_precision, compile (as for resolve_config)
    run_dir: str
    download: bool = False
    trackers: tuple[str, ...] = ()
    force: bool = False

    @property
    def label(self) -> str:
        return f"{self.cell.row} | {self.cell.column} | seed {self.seed}"

    @property
    def log_name(self) -> str:
        """The task log's file name: the run's, readable (``<row>__<column>-<hash>__seed<k>.log``)."""
        return f"{Path(self.run_dir).parent.name}__seed{self.seed}.log"

    def __call__(self) -> dict[str, Any]:
        from lfm_core.experiments import get_experiment
        from lfm_core.runner import RunLockedError, run_one

        # as in lfm_core.cli: timm's import triggers torch's deprecation warning for torch.jit.script
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
        exp = get_experiment(self.experiment)
        requeue = _take_preemption_signals()
        waiting = False
        try:
            while True:
                try:
                    record, computed = run_one(exp, self.cell, self.profile, self.seed, Path(self.results),
                                               force=self.force, options=self.options,
                                               download=self.download, trackers=self.trackers, **self.runtime)
                    break
                except RunLockedError as exc:
                    if not waiting:
                        _say(f"waiting: {exc}")
                        waiting = True
                    time.sleep(LOCK_POLL_S)
        except (GracefulStop, _Signalled, KeyboardInterrupt) as exc:
            if requeue is None:
                raise
            _say(f"{self.label}: {exc}; requeueing the task")
            signum = getattr(exc, "signum", None) or getattr(exc, "exit_code", 128 + signal.SIGTERM) - 128
            requeue(signum)  # submitit checkpoints this task (RunTask.checkpoint), requeues it and exits
            raise
        summary = {"label": self.label, "computed": computed, "metric": exp.metric,
                   "value": record["metrics"][exp.metric], "wall_s": record["wall_s"]}
        _say(f"{'ran' if computed else 'cached'}: {self.label}: {exp.metric}={summary['value']:.2f} "
             f"({summary['wall_s']:.0f}s)")
        return summary

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit's requeue hook: the same task again, resuming (never --force: that would
        delete the position just saved)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(dataclasses.replace(self, force=False), *args, **kwargs)

    __submitit_checkpoint__ = checkpoint


def _say(text: str) -> None:
    print(text, flush=True)


def _log_to_stdout() -> None:
    """The runs' log lines (lfm_core.runner.LOGGER) also go to the task log."""
    import logging

    from lfm_core.runner import LOGGER

    if not any(getattr(h, "_lfm_task", False) for h in LOGGER.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
        handler._lfm_task = True  # type: ignore[attr-defined]
        LOGGER.addHandler(handler)
        if LOGGER.level == logging.NOTSET:
            LOGGER.setLevel(logging.INFO)


def _take_preemption_signals() -> Callable[[int], None] | None:
    """In a submitit task: take over submitit's preemption signal (USR2) and SIGTERM. Training
    loops turn them into a stop at the next step boundary (lfm_core.stopping); elsewhere they end
    the task at once. Either way the task is then requeued by submitit's own handler, called
    here, after the stop. Returns that requeue call, or None outside submitit."""
    _log_to_stdout()
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    from submitit.core.job_environment import JobEnvironment

    usr = JobEnvironment._usr_sig()
    submitit_handler = signal.getsignal(usr)
    if not callable(submitit_handler):
        return None

    def now(signum, _frame):
        raise _Signalled(signum)

    for sig in {usr, signal.SIGTERM}:
        signal.signal(sig, now)

    def requeue(signum: int) -> None:
        for sig in {usr, signal.SIGTERM}:
            signal.signal(sig, signal.SIG_IGN)  # requeueing: a second signal must not cut it short
        try:
            submitit_handler(signum if signum in (usr, signal.SIGTERM) else usr, None)
        except subprocess.CalledProcessError as exc:  # the scheduler requeues it itself, or it was cancelled
            _say(f"not requeued ({exc}); rerun the same command to resume it")
            sys.exit(143)

    return requeue


def worker_main(path: str) -> None:
    """``python -m lfm_core.launch TASK.pkl`` (a --launcher local worker): run the task; the last
    line of a failure is ``error: ...`` (what the parent shows)."""
    with open(path, "rb") as fh:
        task: RunTask = pickle.load(fh)
    signal.signal(signal.SIGTERM, _interrupt)  # outside training loops: stop now, resume from the checkpoint
    try:
        task()
    except GracefulStop as exc:
        _say(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        _say(f"interrupted ({exc}); the run resumes from its last checkpoint")
        sys.exit(143 if "signal 15" in str(exc) else 130)
    except Exception as exc:  # the parent reports it; the other tasks go on
        traceback.print_exc(file=sys.stdout)
        _say(f"error: {error_line(exc)}")
        sys.exit(1)


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def error_line(exc: BaseException) -> str:
    if isinstance(exc, LFMError):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, OSError):
        from lfm_core.errors import os_error_line

        return f"{type(exc).__name__}: {os_error_line(exc)}"
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


# ------------------------------------------------------------------------------------------
# backends: start tasks, report their states
# ------------------------------------------------------------------------------------------
PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"


class LocalPool:
    """``--jobs N`` worker processes on this machine, each pinned to one GPU (``CUDA_VISIBLE_DEVICES``)
    when there are GPUs, and to ``--cpus-per-task`` intra-op threads (``OMP_NUM_THREADS``)."""

    def __init__(self, tasks: list[RunTask], opts: LaunchOptions, folder: Path):
        import torch

        self.tasks, self.opts, self.folder = tasks, opts, folder
        self.job_id = folder.name
        self.gpus = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        self.slots = opts.jobs
        self.procs: dict[int, subprocess.Popen] = {}
        self.slot_of: dict[int, int] = {}
        self.codes: dict[int, int] = {}

    def log_path(self, i: int) -> Path:
        return self.folder / self.tasks[i].log_name

    def submit(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for i, task in enumerate(self.tasks):
            with open(self.folder / f"{i}.pkl", "wb") as fh:
                pickle.dump(task, fh)

    def _start(self, i: int) -> None:
        busy = set(self.slot_of[j] for j in self.procs)
        slot = min(s for s in range(self.slots) if s not in busy)
        env = {**os.environ, "OMP_NUM_THREADS": str(self.opts.cpus_per_task),
               "MKL_NUM_THREADS": str(self.opts.cpus_per_task), "PYTHONUNBUFFERED": "1"}
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(self.gpus[slot % len(self.gpus)])
        log = open(self.log_path(i), "ab")
        try:
            self.procs[i] = subprocess.Popen([sys.executable, "-m", "lfm_core.launch", str(self.folder / f"{i}.pkl")],
                                             stdout=log, stderr=subprocess.STDOUT, env=env)
        finally:
            log.close()
        self.slot_of[i] = slot

    def poll(self) -> list[str]:
        for i, proc in list(self.procs.items()):
            code = proc.poll()
            if code is not None:
                self.codes[i] = code
                del self.procs[i]
        waiting = [i for i in range(len(self.tasks)) if i not in self.codes and i not in self.procs]
        for i in waiting[: max(0, self.slots - len(self.procs))]:
            self._start(i)
        return [DONE if self.codes.get(i) == 0 else FAILED if i in self.codes
                else RUNNING if i in self.procs else PENDING for i in range(len(self.tasks))]

    def error(self, i: int) -> str:
        code = self.codes.get(i)
        lines = _tail(self.log_path(i))
        errors = [line[len("error: "):] for line in lines if line.startswith("error: ")]
        if errors:
            return errors[-1]
        return f"the worker ended with exit code {code}" + (f" (signal {-code})" if code is not None and code < 0 else "")

    def computed(self, i: int) -> bool | None:
        """Whether the finished task computed its run (False: it found it finished by another)."""
        return not any(line.startswith("cached: ") for line in _tail(self.log_path(i), 5))

    def interrupt(self, signum: int) -> None:
        """Pass the parent's Ctrl-C or SIGTERM on to the workers and wait: each stops at a step
        boundary with its position saved."""
        for proc in self.procs.values():
            if signum != signal.SIGINT:  # Ctrl-C already reached them (same process group)
                proc.send_signal(signum)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()


def signal_delay_s(time_min: int) -> int:
    """How long before its time limit a task gets the stop signal: submitit's 90 s, but at most a
    quarter of a short limit (with 90 s a 1-minute task would be signalled as it starts, and again
    after every requeue, without ever making progress)."""
    return max(5, min(90, time_min * 60 // 4))


class SlurmArray:
    """One Slurm job array through submitit, one task per run (a single job for one run)."""

    def __init__(self, tasks: list[RunTask], opts: LaunchOptions, jobs_root: Path):
        import logging

        self.submitit = import_submitit()
        # the parent's own lines say what happens; submitit's (e.g. sacct warnings) would go to stdout, the table's
        logging.getLogger("submitit").setLevel(logging.ERROR)
        if shutil.which("sbatch") is None or shutil.which("srun") is None:
            raise LFMError("--launcher slurm: no Slurm here (sbatch/srun not found); run where Slurm is, or use "
                           "--launcher local")
        self.tasks, self.opts, self.jobs_root = tasks, opts, jobs_root
        self.jobs: list[Any] = []
        self.job_id = ""  # of the array this launch submitted ("" if none)
        self.attached: list[str] = []  # jobs of earlier launches this one watches
        self._missing: dict[str, float] = {}  # job id -> when it was first seen neither queued nor finished

    def _executor(self, n: int):
        folder = self.jobs_root / ("%A" if n > 1 else "%j")
        # each requeue after a time limit resumes with progress, so a long run may take many of them
        ex = self.submitit.SlurmExecutor(folder=folder, python=shlex.quote(sys.executable), max_num_timeout=MAX_TIMEOUTS)
        threads = self.opts.cpus_per_task
        setup = [f"export OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}", *self.opts.setup]
        params: dict[str, Any] = dict(
            job_name=f"lfm-{self.tasks[0].experiment}", time=self.opts.time_min, cpus_per_task=threads,
            setup=setup, stderr_to_stdout=True, array_parallelism=self.opts.max_parallel or n,
            signal_delay_s=signal_delay_s(self.opts.time_min),
        )
        if self.opts.partition:
            params["partition"] = self.opts.partition
        if self.opts.gpus_per_task:
            params["gpus_per_task"] = self.opts.gpus_per_task
        if self.opts.mem_gb:
            params["mem"] = f"{int(self.opts.mem_gb * 1024)}MB"
        if self.opts.slurm_args:
            params["additional_parameters"] = dict(self.opts.slurm_args)
        ex.update_parameters(**params)
        return ex

    def submit(self) -> None:
        """Submit the tasks as one array, except those a live job of an earlier launch (e.g. one
        with --no-wait) already holds: those are watched, not submitted again."""
        live = self._live_jobs()
        self.jobs = [live.get(task.run_dir) for task in self.tasks]
        self.attached = sorted({str(job.job_id).split("_")[0] for job in live.values()})
        new = [i for i, job in enumerate(self.jobs) if job is None]
        if not new:
            return
        ex = self._executor(len(new))
        try:
            with ex.batch():
                jobs = [ex.submit(self.tasks[i]) for i in new]
        except self.submitit.core.utils.FailedJobError as exc:
            raise LFMError(f"sbatch refused the job: {_last_line(str(exc))}") from None
        except subprocess.CalledProcessError as exc:
            out = (exc.output or b"").decode(errors="replace") if isinstance(exc.output, bytes) else str(exc.output)
            raise LFMError(f"sbatch refused the job: {_last_line(out) or exc}") from None
        from lfm_core.io import atomic_write_json

        self.job_id = str(jobs[0].job_id).split("_")[0]
        for i, job in zip(new, jobs):
            self.jobs[i] = job
            link = self.folder / self.tasks[i].log_name  # the task logs, named by run
            if not link.exists():
                link.symlink_to(job.paths.stdout.name)
        atomic_write_json(self.folder / MANIFEST, {"job": self.job_id, "array": len(new) > 1,
                                                    "runs": [self.tasks[i].run_dir for i in new]})

    def _live_jobs(self) -> dict[str, Any]:
        """run directory -> the pending or running task of an earlier launch that will compute it."""
        import json

        wanted = {task.run_dir for task in self.tasks}
        candidates: dict[str, Any] = {}
        for manifest in sorted(self.jobs_root.glob(f"*/{MANIFEST}")):
            try:
                data = json.loads(manifest.read_text())
                runs, job, array = list(data["runs"]), str(data["job"]), bool(data["array"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            for index, run_dir in enumerate(runs):
                if run_dir in wanted:
                    job_id = f"{job}_{index}" if array else job
                    candidates[run_dir] = self.submitit.SlurmJob(folder=manifest.parent, job_id=job_id)
        if not candidates:
            return {}
        queue = _squeue()
        return {run_dir: job for run_dir, job in candidates.items()
                if not job.paths.result_pickle.exists() and job.job_id in (queue or {})}

    @property
    def folder(self) -> Path:
        return self.jobs_root / self.job_id

    def log_path(self, i: int) -> Path:
        return self.jobs[i].paths.folder / self.tasks[i].log_name

    def poll(self) -> list[str]:
        queue = _squeue()
        return [self._state(job, queue) for job in self.jobs]

    def _state(self, job, queue: dict[str, str] | None) -> str:
        """From the task's result file (written before it exits), else from the queue: the
        controller's live view, which needs no accounting (sacct) to answer."""
        if job.paths.result_pickle.exists():
            try:
                outcome = self.submitit.core.utils.pickle_load(job.paths.result_pickle)[0]
            except Exception:  # being written
                return RUNNING
            return DONE if outcome == "success" else FAILED
        if queue is None:  # squeue did not answer this time
            return PENDING
        if job.job_id in queue:
            self._missing.pop(job.job_id, None)
            return RUNNING if queue[job.job_id] in ("RUNNING", "COMPLETING") else PENDING
        # neither queued nor finished: it ended without a result (killed, out of memory, node lost)
        # once a file system that lags has had time to show its result
        first = self._missing.setdefault(job.job_id, time.time())
        return FAILED if time.time() - first > RESULT_GRACE_S else RUNNING

    def error(self, i: int) -> str:
        job = self.jobs[i]
        if job.paths.result_pickle.exists():
            trace = self.submitit.core.utils.pickle_load(job.paths.result_pickle)[1]
            return _last_line(str(trace)) or "failed"
        try:  # Slurm's word for it (OUT_OF_MEMORY, NODE_FAIL...), where accounting is on
            proc = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", str(job.job_id)],
                                  capture_output=True, text=True, timeout=60)
            state = (proc.stdout.split() or [""])[0] if proc.returncode == 0 else ""
        except (OSError, subprocess.TimeoutExpired):
            state = ""
        return f"the task ended without a result ({state or 'killed?'}; see its log)"

    def computed(self, i: int) -> bool | None:
        try:
            return bool(self.submitit.core.utils.pickle_load(self.jobs[i].paths.result_pickle)[1]["computed"])
        except Exception:  # not readable (yet): say "ran"
            return None

    def interrupt(self, signum: int) -> None:
        """The parent stops watching; the array goes on."""


MANIFEST = "runs.json"  # <results>/.jobs/<job id>/runs.json: the run directory of each array task
RESULT_GRACE_S = 60.0  # how long a task gone from the queue may take to show its result file


def _squeue() -> dict[str, str] | None:
    """Every queued (pending or running) Slurm task of this user: ``{"12_3": "RUNNING", ...}``, one
    entry per array task; None if squeue fails."""
    import getpass

    try:
        proc = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i %T"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return dict(line.split()[:2] for line in proc.stdout.splitlines() if len(line.split()) >= 2)


def _tail(path: Path, n: int = 50) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not set(line.strip()) <= set("-")]
    return lines[-1] if lines else ""


# ------------------------------------------------------------------------------------------
# the parent: launch, watch, report
# ------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    failed: list[tuple[RunTask, str, Path]] = field(default_factory=list)
    submitted: bool = True  # False: --no-wait returned before the tasks ended


def run_tasks(tasks: list[RunTask], opts: LaunchOptions, results: Path, console, command: str) -> Outcome:
    """Launch ``tasks`` (local pool or Slurm array), show their progress, print one line per
    failed task; returns when every task has ended (or at once with --no-wait)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    jobs_root = Path(results) / JOBS_DIR
    if opts.launcher == "local":
        backend: Any = LocalPool(tasks, opts, jobs_root / f"local-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    else:
        backend = SlurmArray(tasks, opts, jobs_root)
    backend.submit()
    if opts.launcher == "slurm":
        ids = ([backend.job_id] if backend.job_id else []) + backend.attached
        if backend.attached:
            held = sum(str(job.job_id).split("_")[0] in backend.attached for job in backend.jobs)
            console.print(f"{held} run(s) are in Slurm job {', '.join(backend.attached)} of an earlier launch "
                          "(pending or running): watching them", highlight=False, soft_wrap=True)
        if backend.job_id:
            submitted = len(tasks) - sum(str(job.job_id).split("_")[0] in backend.attached for job in backend.jobs)
            console.print(f"submitted Slurm job {backend.job_id}: {submitted} task(s), task logs in "
                          f"{backend.folder}/", highlight=False, soft_wrap=True)
        if opts.no_wait:
            console.print(f"not waiting; `squeue -j {','.join(ids)}` shows it; when it has ended, the same command "
                          f"prints the table: {command}", highlight=False, soft_wrap=True)
            return Outcome(submitted=False)
    else:
        console.print(f"{len(tasks)} task(s) on {opts.jobs} local worker(s), task logs in {backend.folder}/",
                      highlight=False, soft_wrap=True)
    outcome = Outcome()
    reported: set[int] = set()
    watch = _LogWatcher([Path(t.run_dir) / "log.txt" for t in tasks])
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn()]
    start = time.time()
    try:
        with Progress(*columns, console=console, transient=False) as bar:
            total = bar.add_task("tasks", total=len(tasks))
            while True:
                states = backend.poll()
                for i, line in watch.news():
                    bar.console.print(f"  {tasks[i].label}: {line}", highlight=False, markup=False, soft_wrap=True)
                for i, state in enumerate(states):
                    if state in (DONE, FAILED) and i not in reported:
                        reported.add(i)
                        if state == DONE:
                            bar.console.print(f"  {_done_line(tasks[i], backend.computed(i))}", highlight=False,
                                              markup=False,
                                              soft_wrap=True)
                        else:
                            error = backend.error(i)
                            outcome.failed.append((tasks[i], error, backend.log_path(i)))
                            bar.console.print(f"  failed: {tasks[i].label}: {error} (log: {backend.log_path(i)}); "
                                              f"retry: {command}", highlight=False, markup=False, soft_wrap=True)
                counts = {s: states.count(s) for s in (DONE, RUNNING, PENDING, FAILED)}
                bar.update(total, completed=counts[DONE] + counts[FAILED],
                           description=f"{counts[DONE]} done, {counts[RUNNING]} running, {counts[PENDING]} pending, "
                                       f"{counts[FAILED]} failed")
                if counts[DONE] + counts[FAILED] == len(tasks):
                    break
                time.sleep(min(30.0, max(0.5, (time.time() - start) / 30)))  # sacct: not too often
    except KeyboardInterrupt as exc:
        signum = signal.SIGTERM if f"signal {signal.SIGTERM.value}" in str(exc) else signal.SIGINT
        backend.interrupt(signum)
        if opts.launcher == "slurm":
            console.print(f"stopped watching; Slurm job {backend.job_id} goes on (scancel {backend.job_id} stops it); "
                          f"the same command watches it again and prints the table: {command}", highlight=False,
                          soft_wrap=True)
        raise
    return outcome


def _done_line(task: RunTask, computed: bool | None) -> str:
    from lfm_core.experiments import get_experiment
    from lfm_core.validate import read_result

    exp = get_experiment(task.experiment)
    record = read_result(Path(task.run_dir) / "result.json", exp.metric)
    if record is None:
        return f"done: {task.label}"
    tag = "cached" if computed is False else "ran"
    return f"{tag}: {task.label}: {exp.metric}={record['metrics'][exp.metric]:.2f} ({record['wall_s']:.0f}s)"


class _LogWatcher:
    """New lines of the runs' log.txt that say a run resumed or stopped (for the terminal)."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        self.offsets = [p.stat().st_size if p.exists() else 0 for p in paths]

    def news(self) -> list[tuple[int, str]]:
        out = []
        for i, path in enumerate(self.paths):
            try:
                size = path.stat().st_size
            except OSError:
                continue
            if size < self.offsets[i]:  # rewritten (--force)
                self.offsets[i] = 0
            if size == self.offsets[i]:
                continue
            with open(path, "rb") as fh:
                fh.seek(self.offsets[i])
                chunk = fh.read(size - self.offsets[i])
            end = chunk.rfind(b"\n") + 1  # whole lines only
            self.offsets[i] += end
            for line in chunk[:end].decode(errors="replace").splitlines():
                text = line.split("] ", 1)[-1]
                if text.startswith(("resumed ", "stopped by a signal")):
                    out.append((i, text))
        return out


if __name__ == "__main__":  # a --launcher local worker
    worker_main(sys.argv[1])
