"""Experiments: one paper table or figure each, with its grid, the paper's numbers and profiles.

An experiment package registers its experiments through the ``lfm.experiments`` entry-point
group. The runner (``lfm_core.runner``) turns an experiment into run directories; the report
tool (``lfm_core.report``) turns run directories back into tables and figures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import UnionType
from typing import Any, ClassVar, Mapping, Sequence, Union, get_args, get_origin, get_type_hints

import click

from lfm_core.claims import Claim
from lfm_core.data import CIFAR_FOLDERS
from lfm_core.errors import UsageError, check_choice
from lfm_core.paper import PaperValue

PROFILE_NAMES = ("smoke", "cpu", "paper")
# options that only choose which cells or seeds run, or how results are found: never part of a
# run's identity (everything else an experiment's options set is, unless ``resolve`` says better)
SELECTORS = ("methods", "rates", "reuse", "only", "data_root", "download", "print_config")


@dataclass(frozen=True)
class Cell:
    """One cell of a table (row x column); ``params`` is all that ``run_cell`` needs and names the run."""

    row: str
    column: str
    params: dict[str, Any] = field(hash=False)

    def slug(self) -> str:
        parts = []
        for key in sorted(self.params):
            value = self.params[key]
            text = f"{value:g}" if isinstance(value, float) else str(value)
            parts.append(f"{key}={text}")
        return ",".join(parts).replace("/", "_").replace(" ", "")


class Experiment:
    """Base class; subclasses set the class attributes and implement ``cells`` and ``run_cell``."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    kind: ClassVar[str] = "table"  # or "figure"
    metric: ClassVar[str] = "test_acc"  # the result key the table shows
    metric_label: ClassVar[str] = "Test accuracy (%)"
    higher_is_better: ClassVar[bool] = True
    rows: ClassVar[list[str]] = []
    columns: ClassVar[list[str]] = []
    # (row, column) -> the paper's number; rows we do not run are shown with their cited numbers
    paper: ClassVar[dict[tuple[str, str], PaperValue]] = {}
    cited_rows: ClassVar[tuple[str, ...]] = ()
    # the seeds each profile runs by default
    seeds: ClassVar[dict[str, list[int]]] = {"smoke": [0], "cpu": [0, 1, 2], "paper": [0, 1, 2]}
    # what the paper claims about this table, checked against its runs in claims.md
    claims: ClassVar[tuple[Claim, ...]] = ()
    package: ClassVar[str] = ""
    # the row other rows are compared with when a stand-in makes raw numbers incomparable
    base_row: ClassVar[str | None] = None
    # whether run_cell honours ``ctx.compile`` (``lfm-bench run --compile``); others refuse it
    supports_compile: ClassVar[bool] = False

    # -- command-line options specific to this experiment ---------------------------------
    def options(self) -> list[click.Option]:
        return []

    def validate(self, profile: str, options: dict[str, Any]) -> None:
        """Raise UsageError (or DataNotFoundError) before anything runs; ``options["only"]`` is
        ``--only`` (check what the cells it keeps need, see ``selected``)."""

    def describe(self, profile: str, options: dict[str, Any]) -> str:
        """One line for the start of a run: which data and protocol, and how to get the paper's."""
        return ""

    def cells(self, profile: str, options: dict[str, Any]) -> list[Cell]:
        raise NotImplementedError

    def run_cell(self, cell: Cell, profile: str, seed: int, ctx: Any) -> dict[str, Any]:
        """Train/evaluate one cell for one seed (``ctx``: a ``lfm_core.runner.RunContext``; its
        ``config["settings"]`` is what ``resolve`` returned); return metrics (with ``self.metric``)."""
        raise NotImplementedError

    # -- identity and labels -----------------------------------------------------------------
    def resolve(self, cell: Cell, profile: str, options: dict[str, Any]) -> dict[str, Any]:
        """Every setting that can change this cell's result: the profile's settings after
        command-line overrides, the method's options with their defaults. It is recorded in the
        run's ``config.json``, is part of the run's identity, and is what ``run_cell`` should read.
        The default, for experiments that do not say better: every option but the selectors."""
        return {k: v for k, v in sorted(options.items()) if k not in SELECTORS}

    def overrides(self, cell: Cell, options: dict[str, Any]) -> dict[str, Any]:
        """The options that change the profile's protocol for this cell (``--epochs``, ``--set``);
        a paper-profile run with any of them is no longer comparable with the paper's number."""
        return {}

    def run_labels(self, config: dict[str, Any]) -> dict[str, str]:
        """What really ran, in words, from a run's config: ``data`` (e.g. "digits 16x16, stand-in
        for CIFAR-10"), ``model``, ``budget``. Reports print these beside the paper's names."""
        return {}

    def not_run_reason(self, column: str) -> str:
        """Why a column can have no run on a machine like this one ("" if it simply was not run)."""
        return ""

    def table_title(self, configs: list[dict[str, Any]]) -> str:
        """The title of a table of these runs (e.g. naming a noise type other than the paper's)."""
        return self.title

    def column_label(self, column: str, configs: list[dict[str, Any]]) -> str:
        """The header of a column given the configs of its runs (e.g. GPU-days vs CPU-hours)."""
        return column

    def paper_matches(self, column: str, configs: list[dict[str, Any]]) -> bool:
        """Whether the paper's numbers of ``column`` are for what these runs ran (the same noise
        type, say); where not, the report shows no paper number beside them."""
        return True

    def includes(self, record: dict[str, Any]) -> bool:
        """Whether a finished run belongs in this table (e.g. only its own noise type)."""
        return True

    # -- figures ---------------------------------------------------------------------------
    def plot(self, frame, out_path) -> None:  # pandas DataFrame of results
        raise NotImplementedError


def selected(cell: Cell, only: str | None) -> bool:
    """Whether ``--only TEXT`` keeps ``cell``: TEXT is part of its row or its column (None keeps all)."""
    return not only or only in cell.row or only in cell.column


def parse_set(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as a dict; values are read as JSON where they parse (numbers,
    true/false, null, lists), else kept as text (``encoder=pixels``)."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"bad --set {item!r}: expected KEY=VALUE, e.g. --set lr=0.02")
        out[key.strip()] = _json_or_text(text)
    return out


def check_set(values: dict[str, Any], known: dict[str, Any]) -> None:
    """Every ``--set`` key must be one of ``known`` (key -> its default, or None where any value
    goes); a value must have its default's kind (a number for a number, text for text)."""
    for key, value in values.items():
        check_choice("--set key", key, sorted(known))
        default = known[key]
        if default is None or value is None:
            continue
        kinds = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}.get(type(default))
        if kinds and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
            raise UsageError(f"--set {key}={value!r}: expected {type(default).__name__} like the default "
                             f"{default!r}")


def typed_set(values: Mapping[str, Any], settings: Sequence[type],
              choices: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """``--set`` values checked against the fields of the ``settings`` dataclasses and read as
    their types: a key must be a field; a value must have the field's type (``X | None`` also
    takes null; a tuple takes a JSON list or comma-separated text, each element checked, names
    against ``choices[key]`` where given). A bad one is a one-line UsageError."""
    hints = {f.name: get_type_hints(cls)[f.name] for cls in settings for f in fields(cls)}
    out = {}
    for key, value in values.items():
        check_choice("--set key", key, sorted(hints))
        out[key] = _typed_value(key, value, hints[key], (choices or {}).get(key, ()))
    return out


def _typed_value(key: str, value: Any, hint: Any, choices: Sequence[str]) -> Any:
    options = get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise UsageError(f"--set {key}=null: expected {_type_name(hint)}")
    kind = next(a for a in options if a is not type(None))
    if get_origin(kind) is not tuple:
        return _typed_scalar(key, value, value, kind, hint, choices)
    items = [_json_or_text(t.strip()) for t in value.split(",")] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise UsageError(f"--set {key}={value!r}: expected {_type_name(hint)}, as a list or comma-separated")
    return tuple(_typed_scalar(key, value, item, get_args(kind)[0], hint, choices) for item in items)


def _typed_scalar(key: str, value: Any, item: Any, kind: type, hint: Any, choices: Sequence[str]) -> Any:
    kinds = (int, float) if kind is float else (kind,)
    if not isinstance(item, kinds) or (isinstance(item, bool) and kind is not bool):
        raise UsageError(f"--set {key}={value!r}: expected {_type_name(hint)}")
    return check_choice(f"--set {key} value", item, choices) if choices else item


def _json_or_text(text: str) -> Any:
    """``text`` read as JSON where it parses (numbers, true/false, null, lists), else as it is."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _type_name(hint: Any) -> str:
    """A field type in words: ``int``, ``int or null``, ``a tuple of str``."""
    options = get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)
    words = [f"a tuple of {_type_name(get_args(a)[0])}" if get_origin(a) is tuple else
             "null" if a is type(None) else a.__name__ for a in options]
    return " or ".join(words)


def check_profile(profile: str) -> str:
    return check_choice("profile", profile, PROFILE_NAMES)


def has_cifar(root: Any, name: str) -> bool:
    """Whether CIFAR-10 or CIFAR-100 (``name``) is at ``root`` as the python-pickle folder that
    ``lfm_core.data.load_dataset`` reads: a folder holding it, or that folder itself."""
    if not root:
        return False
    base, folder = Path(root).expanduser(), CIFAR_FOLDERS[name]
    return (base / folder).is_dir() or (base.name == folder and base.is_dir())


def get_experiment(name: str) -> Experiment:
    from lfm_core.registries import EXPERIMENTS

    cls = EXPERIMENTS.get(name)
    return cls() if isinstance(cls, type) else cls
