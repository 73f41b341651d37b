"""Experiments: one paper table or figure each, with its grid, the paper's numbers and profiles.

An experiment package registers its experiments through the ``lfm.experiments`` entry-point
group. The runner (``lfm_core.runner``) turns an experiment into run directories; the report
tool (``lfm_core.report``) turns run directories back into tables and figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import click

from lfm_core.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    from lfm_core.runner import RunContext

PROFILES = ("smoke", "cpu", "paper")


@dataclass(frozen=True)
class PaperValue:
    value: float
    std: float | None = None


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


def pv(text: str) -> PaperValue:
    """Parse a paper figure such as ``"89.06±0.17"`` or ``"86.4"``."""
    value, _, std = text.replace(" ", "").partition("±")
    return PaperValue(float(value), float(std) if std else None)


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
    seeds: ClassVar[dict[str, list[int]]] = {"smoke": [0], "cpu": [0, 1, 2], "paper": [0, 1, 2]}
    package: ClassVar[str] = ""

    # -- command-line options specific to this experiment ---------------------------------
    def options(self) -> list[click.Option]:
        return []

    def validate(self, profile: str, options: dict[str, Any]) -> None:
        """Raise UsageError (or DataNotFoundError) before anything runs."""

    def describe(self, profile: str, options: dict[str, Any]) -> str:
        """One line for the start of a run: which data and protocol, and how to get the paper's."""
        return ""

    def cells(self, profile: str, options: dict[str, Any]) -> list[Cell]:
        raise NotImplementedError

    def run_cell(self, cell: Cell, profile: str, seed: int, ctx: "RunContext") -> dict[str, Any]:
        """Train/evaluate one cell for one seed; return metrics (must include ``self.metric``)."""
        raise NotImplementedError

    def includes(self, record: dict[str, Any]) -> bool:
        """Whether a finished run belongs in this table (e.g. only its own noise type)."""
        return True

    # -- figures ---------------------------------------------------------------------------
    def plot(self, frame, out_path) -> None:  # pandas DataFrame of results
        raise NotImplementedError


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise UsageError(f"unknown profile {profile!r}. Valid choices: {', '.join(PROFILES)}.")
    return profile


def get_experiment(name: str) -> Experiment:
    from lfm_core.registries import EXPERIMENTS

    cls = EXPERIMENTS.get(name)
    return cls() if isinstance(cls, type) else cls
