"""A run's identity: its whole resolved configuration, hashed (DomainBed style).

Two runs are the same run only if everything that can change their result is equal: the cell,
every profile setting after command-line overrides, the method's options with their defaults,
the data set, the content of any weights file, the runtime (device type, mixed precision) and the
versions of the lfm packages. The run directory is named by a readable prefix and a short hash of
that configuration, so changing any option makes a new run and keeps the old one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

PACKAGES = ("lfm-core", "lfm-dr", "lfm-nas")
# data sets that ship with the code: their folder on disk is not part of their identity
EMBEDDED = ("digits", "photo_patches", "synthetic")


def canonical(obj: Any) -> Any:
    """The JSON form a config is recorded in (tuples become lists, paths strings)."""
    return json.loads(json.dumps(obj, sort_keys=True, default=_plain))


def _plain(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable in a run config: {type(obj).__name__}")


def config_id(config: dict[str, Any]) -> str:
    """Hash of the configuration without its seed: equal for every seed of one configuration."""
    rest = {k: v for k, v in config.items() if k not in ("seed", "config_id")}
    text = json.dumps(canonical(rest), sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def run_name(row: str, column: str, cid: str) -> str:
    """``<row>__<column>-<hash>``, shortened and restricted to characters every file system takes."""
    def part(text: str) -> str:
        text = text.replace("%", "pct").replace("+", "plus")
        return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_")[:40]

    return f"{part(row)}__{part(column)}-{cid}"


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def file_digest(path: str | os.PathLike) -> dict[str, Any]:
    """Identity of a weights file by content (sha256), so a replaced file makes a new run."""
    p = Path(path).expanduser().resolve()
    stat = p.stat()
    return {"path": str(p), "sha256": _sha256(str(p), stat.st_size, stat.st_mtime_ns)}


@lru_cache(maxsize=32)
def _sha256(path: str, _size: int, _mtime: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]
