"""Runs an experiment's cells x seeds, one run directory each (DomainBed style).

``<results>/<experiment>/<profile>/<row>__<column>-<config hash>/seed<k>/`` holds ``config.json``
(the whole resolved config, see ``lfm_core.identity``), ``log.txt``, ``metrics.jsonl`` (one record
per epoch), ``checkpoint.pt`` (for resume)
and, once finished, ``result.json``. A finished run is not rerun unless ``force``; an unfinished
one resumes from its checkpoint; a lock file stops two processes from running the same directory.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lfm_core.experiments import Cell, Experiment
from lfm_core.identity import EMBEDDED, canonical, config_id, package_versions, run_name
from lfm_core.io import (atomic_write_json, atomic_write_text, load_checkpoint, read_jsonl, remove_orphan_temp_files,
                         save_checkpoint, write_jsonl)
from lfm_core.locking import RunLock, RunLockedError  # noqa: F401  (RunLockedError: re-exported)
from lfm_core.runtime import is_main_process, process_accelerator, wait_for_everyone
from lfm_core.validate import read_result

RESULT = "result.json"
CHECKPOINT = "checkpoint.pt"
# the config keys a result record repeats at its top level (what results are filtered and grouped by)
RECORD_KEYS = ("experiment", "profile", "row", "column", "params", "seed")


# Every run's log lines go through Python logging: ``log.txt`` is one FileHandler per run directory;
# attach your own handlers to "lfm.run" to see them elsewhere.
LOGGER = logging.getLogger("lfm.run")
TRACKERS = ("tensorboard",)
# log lines of experiments that say where a run resumed ("resumed at epoch 1 step 3"); also echoed
RESUME_PREFIX = "resumed "


def _no_progress(done: int, total: int, text: str = "") -> None:
    """The progress callback of a run that reports none."""


@dataclass
class RunContext:
    """What ``Experiment.run_cell`` gets: its directory, logging, checkpoints, progress.

    Per-epoch records go to ``metrics.jsonl`` and ``metrics.csv`` (rewritten atomically) and to the
    Accelerate trackers named in ``trackers`` (e.g. TensorBoard event files under the run
    directory). Use it as a context manager, or call ``close``, to release the log file and
    trackers."""

    run_dir: Path
    config: dict[str, Any]
    progress: Callable[[int, int, str], None] = _no_progress
    echo: Callable[[str], None] = lambda text: None
    data_root: str | None = None
    download: bool = False
    device: str | None = None
    mixed_precision: str = "no"
    compile: bool = False  # torch.compile the networks (lfm_core.runtime.compile_module)
    # in a multi-process launch only rank 0 writes the run directory; the others train in step
    main_process: bool = True
    trackers: tuple[str, ...] = ()
    # the command's experiment options, selectors included (e.g. NAS --no-reuse); what changes a result is in config
    options: dict[str, Any] = field(default_factory=dict)
    _metrics: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._handler: logging.Handler | None = None
        self._trackers: list[Any] | None = None
        if self.main_process:
            self._handler = logging.FileHandler(self.run_dir / "log.txt", delay=True)
            self._handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
            self._handler.addFilter(lambda record: getattr(record, "run_dir", None) == str(self.run_dir))
            LOGGER.addHandler(self._handler)
            if LOGGER.level == logging.NOTSET:
                LOGGER.setLevel(logging.INFO)
        self._metrics = read_jsonl(self.run_dir / "metrics.jsonl", on_bad=self._warn)

    def __enter__(self) -> "RunContext":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._handler is not None:
            LOGGER.removeHandler(self._handler)
            self._handler.close()
            self._handler = None
        for tracker in self._trackers or []:
            tracker.finish()
        self._trackers = None

    def _warn(self, text: str) -> None:
        self.log(f"warning: {text}")
        self.echo(f"warning: {text}")

    def log(self, text: str) -> None:
        if self.main_process:
            LOGGER.info(text, extra={"run_dir": str(self.run_dir)})
        if text.startswith(RESUME_PREFIX):  # where a run resumes is news for the terminal too
            self.echo(f"  {self.config['row']} | {self.config['column']} | seed {self.config['seed']}: {text}")

    def log_metrics(self, record: dict[str, Any]) -> None:
        """Append one record (e.g. one epoch); the files are rewritten atomically."""
        self._metrics.append(record)
        if self.main_process:
            self._write_metrics()
            numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for tracker in self._started_trackers():
                tracker.log(numbers, step=int(record.get("epoch", len(self._metrics))))

    def truncate_metrics(self, n: int) -> None:
        """On resume: keep the first n records (those the checkpoint covers)."""
        self._metrics = self._metrics[:n]
        if self.main_process:
            self._write_metrics()

    def _write_metrics(self) -> None:
        write_jsonl(self.run_dir / "metrics.jsonl", self._metrics)
        columns = list(dict.fromkeys(k for r in self._metrics for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, columns, lineterminator="\n")
        writer.writeheader()
        for record in self._metrics:  # nested values (lists, dicts) as JSON text in one field
            writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in record.items()})
        atomic_write_text(self.run_dir / "metrics.csv", buf.getvalue())

    def _started_trackers(self) -> list[Any]:
        if self._trackers is None:
            from accelerate.tracking import LOGGER_TYPE_TO_CLASS

            self._trackers = []
            for name in self.trackers:
                tracker = LOGGER_TYPE_TO_CLASS[name](run_name=name, logging_dir=str(self.run_dir))
                if hasattr(tracker, "start"):
                    tracker.start()
                self._trackers.append(tracker)
        return self._trackers

    @property
    def metrics(self) -> list[dict]:
        return list(self._metrics)

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    def save_checkpoint(self, state: dict) -> None:
        if self.main_process:
            save_checkpoint(self.checkpoint_path, state)

    def load_checkpoint(self) -> dict | None:
        return load_checkpoint(self.checkpoint_path) if self.checkpoint_path.exists() else None


def check_trackers(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The trackers asked for, each known and installed (one line saying what to install if not)."""
    from lfm_core.errors import UsageError, check_choice

    for name in names:
        check_choice("tracker", name, TRACKERS)
        from accelerate.utils import is_tensorboard_available

        if name == "tensorboard" and not is_tensorboard_available():
            raise UsageError("--tracker tensorboard needs TensorBoard: pip install tensorboard")
    return tuple(names)


def resolve_config(experiment: Experiment, cell: Cell, profile: str, seed: int, options: dict[str, Any],
                   device: str | None = None, mixed_precision: str = "no", data_root: str | None = None,
                   compile: bool = False, **_: Any) -> dict[str, Any]:
    """The whole resolved configuration of one run: what ``config.json`` records and the run
    directory's hash names. Equal configs (but the seed) give equal ``config_id``."""
    options = dict(options or {})
    data_root = data_root or options.get("data_root")
    config: dict[str, Any] = {
        "experiment": experiment.name,
        "profile": profile,
        "row": cell.row,
        "column": cell.column,
        "params": cell.params,
        "seed": int(seed),
        "settings": experiment.resolve(cell, profile, {**options, "data_root": data_root}),
        "overrides": experiment.overrides(cell, options),
        "runtime": {"device_type": _device_type(device), "mixed_precision": mixed_precision or "no"},
        "versions": package_versions(),
    }
    if compile:  # recorded only when on, so that earlier runs keep their config_id
        config["runtime"]["compile"] = True
    if data_root and cell.params.get("dataset") not in EMBEDDED:
        config["runtime"]["data_root"] = str(Path(data_root).expanduser().resolve())
    config = canonical(config)
    config["config_id"] = config_id(config)
    return config


def _device_type(device: str | None) -> str:
    import torch

    if device:
        return str(device).split(":")[0]
    return "cuda" if torch.cuda.is_available() else "cpu"


def run_dir_for(results: Path, config: dict[str, Any]) -> Path:
    """``<results>/<experiment>/<profile>/<row>__<column>-<config hash>/seed<k>``."""
    name = run_name(config["row"], config["column"], config["config_id"])
    return Path(results) / config["experiment"] / config["profile"] / name / f"seed{config['seed']}"


def environment() -> dict[str, Any]:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu x{os.cpu_count()}",
    }


def finished_record(experiment: Experiment, run_dir: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The result record of a finished run of exactly ``config`` in ``run_dir``, else None (no
    result, a torn one, or one of another configuration)."""
    path = Path(run_dir) / RESULT
    if not path.exists():
        return None
    record = read_result(path, experiment.metric)  # None when torn: run again
    return record if record is not None and record.get("config") == config else None


def run_one(
    experiment: Experiment,
    cell: Cell,
    profile: str,
    seed: int,
    results: Path,
    *,
    force: bool = False,
    options: dict[str, Any] | None = None,
    **ctx_kwargs: Any,
) -> tuple[dict[str, Any], bool]:
    """Run (or resume, or reuse) one cell x seed. Returns (result record, whether it was computed).

    A finished run is reused only when its recorded config equals the one asked for now."""
    config = resolve_config(experiment, cell, profile, seed, options or {}, **ctx_kwargs)
    run_dir = run_dir_for(results, config)
    result_path = run_dir / RESULT
    record = None if force else finished_record(experiment, run_dir, config)
    if record is not None:
        return record, False
    # several launched processes run the same cell in step; rank 0 owns the directory
    main = is_main_process()
    process_accelerator(ctx_kwargs.get("device"))  # the process group, before the barriers below
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir / ".lock") if main else contextlib.nullcontext():
        if main:
            remove_orphan_temp_files(run_dir)  # left by a process killed while writing (we hold the lock)
        # another process may have finished it between the check above and taking the lock
        record = None if force or not main else finished_record(experiment, run_dir, config)
        if record is not None:
            return record, False
        if force and main:
            for name in (RESULT, CHECKPOINT, "metrics.jsonl", "metrics.csv", "log.txt"):
                (run_dir / name).unlink(missing_ok=True)
        if main:
            atomic_write_json(run_dir / "config.json", config)
        wait_for_everyone()  # nobody reads a checkpoint that --force is deleting
        with RunContext(run_dir=run_dir, config=config, main_process=main, options=dict(options or {}),
                        **ctx_kwargs) as ctx:
            ctx.log(f"start {experiment.name} {profile} {cell.row} | {cell.column} seed {seed} "
                    f"(config {config['config_id']})")
            start = time.perf_counter()
            metrics = experiment.run_cell(cell, profile, seed, ctx)
            wall = time.perf_counter() - start + float(metrics.pop("_resumed_wall_s", 0.0))
            if experiment.metric not in metrics:
                raise RuntimeError(f"{experiment.name}.run_cell returned no {experiment.metric!r}")
            record = {**{k: config[k] for k in RECORD_KEYS}, "config": config, "config_id": config["config_id"],
                      "metrics": metrics, "wall_s": round(wall, 3), "env": environment()}
            if main:
                atomic_write_json(result_path, record)
            wait_for_everyone()  # every process sees the result before the next cell's check
            ctx.log(f"done in {wall:.1f}s: {metrics}")
            return record, True
