"""The search / evaluation cache: a search or an evaluation with identical settings and seed is
computed once per results root and reused by every cell that needs it (``--no-reuse`` turns that
off). Entries live in ``<results>/.nas-cache/<profile>/<kind>-<hash of the key>.json``; the key is
the search's (or evaluation's) whole configuration: ``search_key`` and ``eval_key`` take every
field of the settings dataclass, so a new setting is part of the key by construction. The one
search setting the CIFAR evaluation reads, ``image_size``, is in its key where it differs from the
profile's (``NASExperiment.eval_cache_key``)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lfm_core.io import atomic_write_json
from lfm_nas.genotypes import genotype_from_dict
from lfm_nas.profiles import EvalSettings, SearchSettings

# a cell's params that only choose how the found cell is evaluated or measured: cells that differ
# in them alone share one search
EVAL_PARAMS = ("eval", "measure")


def search_key(params: dict[str, Any], settings: SearchSettings, seed: int, device: str,
               **extras: Any) -> dict[str, Any]:
    """The search's identity: the cell's search params, every search setting, the seed, the device
    type, and the ``extras`` that are set (mixed precision, encoder weights, data root; absent
    otherwise, so that caches made before them stay valid)."""
    key = {"params": {k: v for k, v in params.items() if k not in EVAL_PARAMS}, "settings": asdict(settings),
           "seed": int(seed), "device": device}
    return {**key, **{k: v for k, v in extras.items() if v}}


def eval_key(genotype: dict[str, Any], params: dict[str, Any], settings: EvalSettings, seed: int, device: str,
             **extras: Any) -> dict[str, Any]:
    """The evaluation's identity: the searched genotype, the evaluation (CIFAR or ImageNet network)
    and its data set, every evaluation setting, the seed, the device type, and the ``extras`` that
    are set (data root, ImageNet root, an image size other than the profile's)."""
    key = {"genotype": genotype, "eval": params.get("eval", "cifar"), "dataset": params["dataset"],
           "settings": asdict(settings), "seed": int(seed), "device": device}
    return {**key, **{k: v for k, v in extras.items() if v}}


def _key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _results_root(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    parents = run_dir.parents
    return parents[3] if len(parents) > 3 else run_dir  # <results>/<experiment>/<profile>/<cell>/seedK


def _attempts(run_dir: Path) -> int:
    """How many times the runner started this run directory since it was last cleared (``--force``
    removes the log): more than one means an interrupted run is being resumed."""
    try:
        return sum(1 for line in (Path(run_dir) / "log.txt").read_text().splitlines() if "] start " in line)
    except OSError:
        return 0


# the fields the cells read from a cache entry, and their types
CACHE_FIELDS = {"search": {"genotype": dict, "search_s": (int, float), "search_epoch_s": (int, float)},
                "eval": {"test_err": (int, float)}}


def _cache_entry_problem(kind: str, entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return "unreadable" if entry is None else f"holds {type(entry).__name__}, not an object"
    for name, types in {"key": dict, "producer": str, **CACHE_FIELDS[kind]}.items():
        if not isinstance(entry.get(name), types) or isinstance(entry.get(name), bool):
            return f"no valid {name!r}"
    try:
        genotype_from_dict(entry["genotype"]) if kind == "search" else None
    except Exception:
        return "no valid 'genotype'"
    return None


class SearchCache:
    def __init__(self, ctx, profile: str, enabled: bool):
        self.run_dir = Path(ctx.run_dir)
        self.root = _results_root(self.run_dir) / ".nas-cache" / profile
        self.enabled = enabled
        self.resuming = _attempts(self.run_dir) > 1
        self.ctx = ctx

    def path(self, kind: str, key: dict[str, Any]) -> Path:
        return self.root / f"{kind}-{_key_hash(key)}.json"

    def get(self, kind: str, key: dict[str, Any]) -> dict[str, Any] | None:
        path = self.path(kind, key)
        if not path.exists():
            return None
        try:
            entry = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            entry = None
        problem = _cache_entry_problem(kind, entry)
        if problem:
            self.ctx.log(f"warning: ignoring the cache entry {path} ({problem}); computing it again")
            return None
        if entry.get("key") != json.loads(json.dumps(key, default=str)):
            return None
        own = entry.get("producer") == str(self.run_dir)
        if own and self.resuming:
            self.ctx.log(f"resume: {kind} already finished by this run ({path.name})")
            return entry
        if own or not self.enabled:
            return None  # a forced rerun (or --no-reuse): compute again
        self.ctx.log(f"reused {kind} from {entry.get('producer')} ({path.name})")
        return entry

    def put(self, kind: str, key: dict[str, Any], value: dict[str, Any]) -> dict[str, Any]:
        entry = {**value, "key": key, "producer": str(self.run_dir)}
        atomic_write_json(self.path(kind, key), entry)
        return entry
