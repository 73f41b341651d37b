"""Shape checks of the files the suite reads back (``result.json``), so that a hand-edited,
foreign or damaged file gives a one-line error naming the file and the fix, or is skipped with a
warning by ``report``, instead of a traceback deep in the table code."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

from lfm_core.errors import LFMError

# the top-level keys every result.json has, with their types
RESULT_KEYS: dict[str, type] = {
    "experiment": str, "profile": str, "row": str, "column": str, "params": dict, "seed": int, "metrics": dict,
}


class ResultFileError(LFMError):
    """A result.json that is valid JSON but not a finished run's result."""


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def result_problem(record: Any, metric: str | None = None) -> str | None:
    """What is wrong with a parsed result.json (None: nothing). ``metric``: a metric that must be
    a number (the experiment's main one); by default the one of the record's experiment, if known."""
    if not isinstance(record, dict):
        return f"holds {type(record).__name__ if record is not None else 'null'}, not an object"
    for key, kind in RESULT_KEYS.items():
        if key not in record:
            return f"has no {key!r}"
        if not isinstance(record[key], kind) or (kind is int and isinstance(record[key], bool)):
            return f"its {key!r} is {type(record[key]).__name__}, not {kind.__name__}"
    if not isinstance(record.get("config_id"), str) or not isinstance(record.get("config"), dict):
        return "written by an older lfm-bench, without its config and config_id: run it again"
    metric = metric or _experiment_metric(record["experiment"])
    if metric is not None:
        if metric not in record["metrics"]:
            return f"has no metric {metric!r}"
        value = record["metrics"][metric]
        if not is_number(value):
            return f"its metric {metric!r} is {value!r}, not a number"
    return None


def _experiment_metric(name: str) -> str | None:
    from lfm_core.registries import EXPERIMENTS

    try:
        return EXPERIMENTS.get(name).metric
    except Exception:  # an experiment not installed here (or a plug-in that fails to load)
        return None


def read_result(path: str | Path, metric: str | None = None) -> dict[str, Any] | None:
    """A finished run's record; None when the file is torn (not JSON: the run is simply redone).
    Valid JSON of the wrong shape raises ResultFileError, naming the file and the fix."""
    path = Path(path)
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    problem = result_problem(record, metric)
    if problem:
        raise ResultFileError(f"{path} is not a result of this suite ({problem}); delete it or rerun with --force")
    return record


def warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


def collect_valid_results(paths, on_skip: Callable[[str], None] = warn) -> list[dict[str, Any]]:
    """The records of ``paths`` that are finished runs; the others are skipped with a warning."""
    records = []
    for path in paths:
        try:
            record = json.loads(Path(path).read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            on_skip(f"skipping {path}: unreadable ({type(exc).__name__})")
            continue
        problem = result_problem(record)
        if problem:
            on_skip(f"skipping {path}: {problem}")
            continue
        record["run_dir"] = str(Path(path).parent)
        records.append(record)
    return records
