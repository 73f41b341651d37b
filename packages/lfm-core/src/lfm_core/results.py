"""Finished runs back from disk: ``collect_results`` (the records) and ``load_results`` (a table).

Every ``result.json`` under a results root is one finished run. Its ``config`` is the whole
resolved configuration (see ``lfm_core.identity``) and ``config_id`` its hash without the seed:
runs with equal ``config_id`` are seeds of one configuration, and only those are ever averaged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

RESULT = "result.json"
# the identity columns of load_results, first in its frame
ID_COLUMNS = ["experiment", "profile", "row", "column", "seed", "config_id"]


def collect_results(results: str | Path) -> list[dict[str, Any]]:
    """Every finished run under a results root; unreadable or malformed files are skipped with a
    warning (``lfm_core.validate``), never fatal."""
    from lfm_core.validate import collect_valid_results

    return collect_valid_results(sorted(Path(results).rglob(RESULT)))


def load_results(results: str | Path | list[dict[str, Any]]) -> pd.DataFrame:
    """One row per finished run under ``results`` (a folder, or records from ``collect_results``).

    Columns: the identity (experiment, profile, row, column, seed, config_id), the cell's
    parameters by name (dataset, noise, rate, method, model, engine, ...), every other config field
    flattened with dots (``settings.train.epochs``, ``runtime.device_type``, ``versions.lfm-core``),
    ``run_dir``, ``wall_s``, and the metrics by name (``test_acc``, ...; a metric whose name is
    already a column is ``metrics.<name>``).
    """
    records = collect_results(results) if isinstance(results, (str, Path)) else list(results)
    rows = []
    for rec in records:
        config = rec.get("config") or {}
        row: dict[str, Any] = {k: rec.get(k) for k in ID_COLUMNS}
        row.update(rec.get("params") or {})
        rest = {k: v for k, v in config.items() if k not in (*ID_COLUMNS, "params")}
        for key, value in _flatten(rest).items():
            row.setdefault(key, value)
        row["run_dir"] = rec.get("run_dir")
        row["wall_s"] = rec.get("wall_s")
        for key, value in (rec.get("metrics") or {}).items():
            if isinstance(value, bool):
                value = float(value)
            row["metrics." + key if key in row else key] = value
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=ID_COLUMNS)
    return frame


def _flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, dict)) else value
    return out
