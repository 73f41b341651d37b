"""The paper's claims, each checked against this suite's finished runs: ``claims.md``.

A claim is a list of comparisons "row A beats row B" in one experiment and column; each
experiment declares the paper's claims about it (``Experiment.claims``) and ``claims.md`` lists
those of every registered experiment. For each comparison,
the seeds of one configuration (same ``config_id``) give mean ± std; the comparison

* **holds** when A is better than B by more than the seeds' spread (the larger sample standard
  deviation of the two),
* **fails** when A is worse by more than that spread,
* is **inconclusive** otherwise, or with fewer than two seeds on either side;
* is **not run** when either row has no runs (it then does not count).

A claim holds when all its comparisons that ran hold, fails when any fails, is inconclusive
otherwise, and is not run when none of its comparisons ran. At cpu scale (digits standing in
for CIFAR, a few epochs) "inconclusive" often means the stand-in cannot separate the methods
(e.g. NAS on digits, every cell at 1-2% error), not that the paper is wrong.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lfm_core.data import STANDIN_TITLES, STANDINS
from lfm_core.io import atomic_write_text

HOLDS, FAILS, INCONCLUSIVE, NOT_RUN = "holds", "fails", "inconclusive", "not run"
PROFILE_ORDER = ("paper", "cpu", "smoke")  # the most faithful profile with runs is used
# where runs on more than one stand-in (lfm_core.data.STANDINS) exist, every claim gets a verdict
# per stand-in, and runs on other data (e.g. CIFAR-100 on disk) count towards each

Value = Callable[[dict[str, Any]], "float | None"]


def metric_value(key: str) -> Value:
    def value(record: dict[str, Any]) -> float | None:
        v = (record.get("metrics") or {}).get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    return value


def rarest_class_recall(record: dict[str, Any]) -> float | None:
    """Recall (%) of the last class, the rarest of a long-tailed training set (class i keeps
    ``n_max * (1/IF) ** (i / (K-1))``), from the run's test confusion matrix."""
    conf = (record.get("metrics") or {}).get("confusion")
    if not conf:
        return None
    last = conf[-1]
    total = sum(last)
    return 100.0 * last[-1] / total if total else None


@dataclass(frozen=True)
class Comparison:
    experiment: str
    better: str  # the row the paper says wins
    worse: str | None  # None: every other row with runs (the baselines), except ``not_baselines``
    columns: tuple[str, ...]  # the columns that count (those without runs are skipped)
    higher_is_better: bool = True
    value: Value = metric_value("test_acc")
    quantity: str = "test accuracy (%)"
    not_baselines: tuple[str, ...] = ()  # rows beyond the paper, never one of "every other row"


@dataclass(frozen=True)
class Claim:
    text: str
    source: str  # where the paper makes it
    comparisons: tuple[Comparison, ...]


def accuracy_above(experiment: str, better: str, columns: tuple[str, ...], worse: str | None = None,
                   not_baselines: tuple[str, ...] = ()) -> Comparison:
    """"``better`` has a higher test accuracy than ``worse`` (None: than every other row)"."""
    return Comparison(experiment, better, worse, columns, not_baselines=not_baselines)


def error_below(experiment: str, better: str, worse: str, columns: tuple[str, ...], metric: str = "test_err",
                quantity: str = "test error (%)") -> Comparison:
    """"``better`` has a lower ``metric`` (default: test error) than ``worse``"."""
    return Comparison(experiment, better, worse, columns, False, metric_value(metric), quantity)


def registered_claims() -> tuple[Claim, ...]:
    """The claims every registered experiment declares, in the experiments' name order (a claim
    an experiment inherits from its parent class is listed once)."""
    from lfm_core.experiments import get_experiment
    from lfm_core.registries import EXPERIMENTS

    claims: dict[int, Claim] = {}
    for name in EXPERIMENTS.names():
        for claim in get_experiment(name).claims:
            claims.setdefault(id(claim), claim)
    return tuple(claims.values())


@dataclass
class Group:
    """The seeds of one configuration of one (experiment, row, column)."""

    experiment: str
    profile: str
    row: str
    column: str
    values: list[float]
    seeds: list[int]
    options: dict[str, Any]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else math.nan

    def text(self) -> str:
        std = "" if math.isnan(self.std) else f" ± {self.std:.2f}"
        return f"{self.mean:.2f}{std} (n={len(self.values)})"


def _included(record: dict[str, Any]) -> bool:
    """The experiment's own filter (e.g. table7 shows flip noise only), where it can be loaded."""
    try:
        from lfm_core.experiments import get_experiment

        return bool(get_experiment(record["experiment"]).includes(record))
    except Exception:  # noqa: BLE001 - an experiment package that is not installed filters nothing
        return True


def standin_of(record: dict[str, Any]) -> str:
    """The stand-in a run used ("" where its data is none of ``STANDINS``)."""
    dataset = str((record.get("params") or {}).get("dataset") or "")
    return dataset if dataset in STANDINS else ""


def _command_options(record: dict[str, Any]) -> dict[str, Any]:
    """The command-line options that reproduce a run: its engine (where it has one) and its
    overrides as ``--set``."""
    options: dict[str, Any] = {}
    if standin_of(record) not in ("", "digits"):  # digits is the default
        options["standin"] = standin_of(record)
    engine = (record.get("params") or {}).get("engine")
    if engine:
        options["engine"] = engine
    overrides = record["config"].get("overrides") or {}
    if overrides:
        options["set"] = overrides
    return options


def groups_of(records: Iterable[dict[str, Any]], comparison: Comparison,
              standin: str | None = None) -> dict[tuple[str, str], Group]:
    """(row, column) -> the group with the most seeds, in the most faithful profile with runs;
    with ``standin``, of the runs on that stand-in (or on no stand-in) only."""
    by_key: dict[tuple[str, str, str, str], Group] = {}
    for rec in records:
        if rec.get("experiment") != comparison.experiment or not _included(rec):
            continue
        if standin is not None and standin_of(rec) not in ("", standin):
            continue
        value = comparison.value(rec)
        if value is None or not math.isfinite(value):
            continue
        profile = str(rec.get("profile", ""))
        key = (profile, str(rec.get("row")), str(rec.get("column")), str(rec["config_id"]))
        group = by_key.setdefault(key, Group(comparison.experiment, profile, key[1], key[2], [], [],
                                             _command_options(rec)))
        group.values.append(value)
        group.seeds.append(int(rec.get("seed", 0)))
    profiles = {k[0] for k in by_key}
    chosen = next((p for p in PROFILE_ORDER if p in profiles), None)
    best: dict[tuple[str, str], Group] = {}
    for (profile, row, column, _), group in by_key.items():
        if profile != chosen:
            continue
        if (row, column) not in best or len(group.values) > len(best[(row, column)].values):
            best[(row, column)] = group
    return best


def verdict(better: Group | None, worse: Group | None, higher_is_better: bool) -> tuple[str, float]:
    """(verdict, difference in the claim's favour) for "better beats worse"."""
    if better is None or worse is None:
        return NOT_RUN, math.nan
    diff = (better.mean - worse.mean) * (1 if higher_is_better else -1)
    if len(better.values) < 2 or len(worse.values) < 2:
        return INCONCLUSIVE, diff
    spread = max(better.std, worse.std)
    if diff > spread:
        return HOLDS, diff
    if diff < -spread:
        return FAILS, diff
    return INCONCLUSIVE, diff


def combine(verdicts: list[str]) -> str:
    """A claim fails if any comparison fails, holds if all that ran hold, is inconclusive
    otherwise, and not run when none ran."""
    verdicts = [v for v in verdicts if v != NOT_RUN]
    if not verdicts:
        return NOT_RUN
    if FAILS in verdicts:
        return FAILS
    if verdicts and all(v == HOLDS for v in verdicts):
        return HOLDS
    return INCONCLUSIVE


def command_for(group: Group, rows: list[str]) -> str:
    """The lfm-bench command that runs these rows and seeds (with the run's own options)."""
    parts = [f"lfm-bench run {group.experiment} --profile {group.profile}"]
    for key, value in sorted(group.options.items()):
        if value in (None, False, "") or key in ("methods", "data_root"):
            continue
        if key == "set":
            parts += [f"--set {k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(value.items())]
            continue
        parts.append(f"--{key.replace('_', '-')}" + ("" if value is True else f" {value}"))
    parts.append('--methods "' + ",".join(dict.fromkeys(rows)) + '"')
    parts.append("--seeds " + ",".join(str(s) for s in sorted(set(group.seeds))))
    return " ".join(parts)


def evaluate(records: list[dict[str, Any]], claim: Claim,
             standin: str | None = None) -> tuple[str, list[dict[str, Any]]]:
    """The claim's verdict and one line per comparison that has runs (on ``standin`` only, if given)."""
    lines: list[dict[str, Any]] = []
    for comp in claim.comparisons:
        groups = groups_of(records, comp, standin)
        for column in comp.columns:
            better = groups.get((comp.better, column))
            if comp.worse is not None:
                rivals = [comp.worse]
            else:
                rivals = [r for (r, c) in groups if c == column and r != comp.better
                          and r not in comp.not_baselines]
            for rival in rivals:
                worse = groups.get((rival, column))
                if better is None and worse is None:
                    continue  # this column was not run at all
                v, diff = verdict(better, worse, comp.higher_is_better)
                ran = better or worse
                assert ran is not None  # columns with neither were skipped above
                lines.append({
                    "experiment": comp.experiment, "column": column, "quantity": comp.quantity,
                    "better": comp.better, "worse": rival, "verdict": v, "diff": diff,
                    "better_text": better.text() if better else "not run",
                    "worse_text": worse.text() if worse else "not run",
                    "profile": ran.profile,
                    "command": command_for(ran, [comp.better, rival]) if better and worse else "",
                })
    return combine([line["verdict"] for line in lines]), lines


def overall_verdict(by_standin: dict[str, str]) -> str:
    """One line for a claim checked on several stand-ins: their verdict where they agree (runs on
    one stand-in only: that one's), else each stand-in's."""
    ran = {k: v for k, v in by_standin.items() if v != NOT_RUN}
    if len(set(ran.values())) <= 1:
        return next(iter(ran.values()), NOT_RUN)
    return "differs by stand-in: " + ", ".join(f"{STANDIN_TITLES[k]} {v}" for k, v in ran.items())


def write_claims(records: Iterable[dict[str, Any]], out_dir: str | Path) -> Path:
    """Write ``claims.md`` (every claim of the registered experiments, its verdict and the
    numbers behind it) into ``out_dir``. Where runs on more than one stand-in exist, each claim
    has a verdict per stand-in and an overall line that says when they disagree."""
    records = list(records)
    claims = registered_claims()
    standins = [s for s in STANDINS if any(standin_of(r) == s for r in records)]
    if len(standins) > 1:
        return _write_claims_per_standin(records, out_dir, standins, claims)
    out = Path(out_dir) / "claims.md"
    text = ["# The paper's claims at this suite's scale", "",
            "Each claim is checked on the finished runs (the most faithful profile that has them). "
            "A comparison *holds* when the claimed winner is ahead by more than the seeds' spread (the larger "
            "sample std of the two), *fails* when it is behind by more than that, and is *inconclusive* otherwise "
            "(or with fewer than 2 seeds); a comparison with a row that has no runs is *not run* and does not count. "
            "At cpu scale, inconclusive often means the stand-in "
            "(digits, a few epochs) cannot separate the methods, not that the paper is wrong.", "",
            "| claim | paper | verdict | comparisons (holds / fails / inconclusive / not run) |", "|---|---|---|---|"]
    details = []
    for claim in claims:
        overall, lines = evaluate(records, claim)
        counts = " / ".join(str(sum(line["verdict"] == v for line in lines))
                            for v in (HOLDS, FAILS, INCONCLUSIVE, NOT_RUN))
        text.append(f"| {claim.text} | {claim.source} | **{overall}** | {counts} |")
        details += _details(claim, lines, f"## {claim.text} ({claim.source}): {overall}")
    atomic_write_text(out, "\n".join(text + [""] + details) + "\n")
    return out


def _details(claim: Claim, lines: list[dict[str, Any]], title: str) -> list[str]:
    out = [title, ""]
    if not lines:
        return out + ["No runs of " + ", ".join(sorted({c.experiment for c in claim.comparisons})) + ".", ""]
    out += ["| experiment | column | quantity | claimed better | vs | Δ (in the claim's favour) | verdict "
            "| profile | command |", "|---|---|---|---|---|---|---|---|---|"]
    for line in lines:
        diff = "" if math.isnan(line["diff"]) else f"{line['diff']:+.2f}"
        command = f"`{line['command']}`" if line["command"] else ""
        out.append(f"| {line['experiment']} | {line['column']} | {line['quantity']} | "
                   f"{line['better']}: {line['better_text']} | {line['worse']}: {line['worse_text']} | "
                   f"{diff} | {line['verdict']} | {line['profile']} | {command} |")
    return out + [""]


def _write_claims_per_standin(records: list[dict[str, Any]], out_dir: str | Path, standins: list[str],
                              claims: tuple[Claim, ...]) -> Path:
    out = Path(out_dir) / "claims.md"
    names = [STANDIN_TITLES[s] for s in standins]
    text = ["# The paper's claims at this suite's scale", "",
            "Each claim is checked on the finished runs (the most faithful profile that has them), once per "
            f"stand-in ({', '.join(names)}): a CPU-scale verdict is a statement about its stand-in. A comparison "
            "*holds* when the claimed winner is ahead by more than the seeds' spread (the larger sample std of the "
            "two), *fails* when it is behind by more than that, and is *inconclusive* otherwise (or with fewer than "
            "2 seeds); a comparison with a row that has no runs is *not run* and does not count. Runs on data that "
            "is no stand-in (e.g. CIFAR-100 on disk, or a run that records no data set) count "
            "towards every stand-in's verdict. The overall verdict says so where the stand-ins disagree.", "",
            "| claim | paper | " + " | ".join(f"verdict on {n}" for n in names) + " | overall |",
            "|---|---|" + "---|" * len(names) + "---|"]
    details = []
    for claim in claims:
        verdicts = {}
        for standin, name in zip(standins, names):
            verdicts[standin], lines = evaluate(records, claim, standin)
            details += _details(claim, lines, f"## {claim.text} ({claim.source}), on {name}: {verdicts[standin]}")
        text.append(f"| {claim.text} | {claim.source} | " + " | ".join(verdicts.values())
                    + f" | **{overall_verdict(verdicts)}** |")
    atomic_write_text(out, "\n".join(text + [""] + details) + "\n")
    return out
