"""Tables and figures rebuilt from run directories, side by side with the paper's numbers.

The DomainBed ``collect_results`` idea, with one rule: only seeds of one configuration are ever
averaged. Runs are grouped by ``config_id`` (the hash of their whole resolved config without the
seed); where a cell holds several configurations (two engines, two epoch budgets), each is shown
on its own line, labelled by what tells them apart. Every table names what really ran (data,
model, budget); a difference to the paper's number (Δ) is shown only where data, model and
protocol are the paper's (the ``paper`` profile without overrides). For stand-ins the comparable
quantities are shown instead: each method's gain over the base row, ours beside the paper's, and
the rank agreement of the methods per column (Kendall τ).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from lfm_core.data import STANDIN_TITLES
from lfm_core.experiments import Experiment, get_experiment
from lfm_core.io import atomic_write_text
from lfm_core.results import _flatten, collect_results, load_results

NOT_RUN = "not run"
PAPER = "Zhang et al., IEEE TAI 2025"
# config fields that never tell two configurations of one cell apart in a label
_UNLABELLED = ("seed", "config_id", "row", "column", "experiment")


def seed_std(values: Iterable[float]) -> float:
    """The spread over seeds that every table, figure and claim shows: the sample standard
    deviation (n - 1 in the denominator, as ``statistics.stdev``); 0.0 for a single seed."""
    vals = [float(v) for v in values]
    return statistics.stdev(vals) if len(vals) > 1 else 0.0


def results_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """``load_results`` of some records, with each run's ``variant`` label (see ``variant_labels``)."""
    records = list(records)
    frame = load_results(records)
    labels = variant_labels(records)
    frame["variant"] = [labels.get(c, "") for c in frame["config_id"]] if len(frame) else []
    return frame


def variant_labels(records: Iterable[dict[str, Any]]) -> dict[str, str]:
    """config_id -> what distinguishes it from the other configurations of the same cell
    (e.g. ``engine=forward-difference``); empty where a cell has one configuration, except that
    where an experiment's runs span several data sets every line names its own."""
    by_cell: dict[tuple, dict[str, dict[str, Any]]] = defaultdict(dict)
    datasets: dict[Any, set[str]] = defaultdict(set)
    for rec in records:
        flat = {k: v for k, v in _flatten(rec["config"]).items() if k.split(".")[0] not in _UNLABELLED}
        by_cell[(rec.get("experiment"), rec.get("row"), rec.get("column"))][rec["config_id"]] = flat
        datasets[rec.get("experiment")].add(str(flat.get("params.dataset")))
    labels: dict[str, str] = {}
    for (experiment, _, _), configs in by_cell.items():
        several = len(datasets[experiment]) > 1
        if len(configs) < 2 and not several:
            continue
        keys = sorted({k for c in configs.values() for k in c})
        differing = [k for k in keys if len({json.dumps(c.get(k), default=str) for c in configs.values()}) > 1]
        if several and "params.dataset" not in differing:
            differing.insert(0, "params.dataset")
        for cid, flat in configs.items():
            # one field may be recorded twice (the cell's engine and the method's): say it once
            parts = list(dict.fromkeys(f"{k.rsplit('.', 1)[-1]}={flat.get(k, '-')}" for k in differing))
            labels[cid] = ", ".join(parts[:3] + ([f"+{len(parts) - 3} more"] if len(parts) > 3 else []))
    return labels


def _labels(exp: Experiment, configs: list[dict[str, Any]]) -> dict[str, str]:
    """The run labels (data, model, budget) shared by ``configs``; differing values joined."""
    values: dict[str, list[str]] = defaultdict(list)
    for config in configs:
        for key, text in exp.run_labels(config).items():
            if text and text not in values[key]:
                values[key].append(text)
    return {k: "; ".join(v) for k, v in values.items()}


def comparable(config: dict[str, Any]) -> bool:
    """A run whose data, model and protocol are the paper's: the paper profile, no overrides."""
    return config.get("profile") == "paper" and not config.get("overrides")


def aggregate(exp: Experiment, frame: pd.DataFrame, metric: str | None = None,
              records: list[dict[str, Any]] | None = None) -> pd.DataFrame:
    """One line per (row, configuration, column): ours (mean, std, n seeds), the paper's, and
    what makes them comparable (Δ where the protocol is the paper's, gains over the base row)."""
    metric = metric or exp.metric
    configs = {r["config_id"]: r.get("config") or {} for r in records or []}
    ours: dict[tuple[str, str, str], dict[str, Any]] = {}
    variants: dict[str, list[str]] = defaultdict(list)
    if not frame.empty and metric in frame:
        sub = frame[(frame["experiment"] == exp.name) & frame[metric].notna()]
        if "variant" not in sub:
            sub = sub.assign(variant="")
        for (row, variant, column, cid), group in sub.groupby(["row", "variant", "column", "config_id"], sort=False):
            values = group[metric].astype(float)
            config = configs.get(cid, {})
            ours[(row, variant, column)] = {
                "mean": float(values.mean()),
                "std": seed_std(values),
                "n": int(len(values)),
                "profile": ",".join(sorted(set(group["profile"]))),
                "dataset": ",".join(sorted({str(d) for d in group.get("dataset", []) if d and d == d})),
                "config_id": cid,
                "comparable": comparable(config) if config else False,
                **{f"{k}_label": v for k, v in _labels(exp, [config] if config else []).items()},
            }
            if variant not in variants[row]:
                variants[row].append(variant)
    by_column: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in records or []:
        by_column[str(rec.get("column"))].append(rec.get("config") or rec)
    shows_paper = {c: exp.paper_matches(c, by_column[c]) for c in exp.columns}
    lines = []
    for row in exp.rows:
        for variant in sorted(variants.get(row) or [""]):
            for column in exp.columns:
                paper = exp.paper.get((row, column)) if shows_paper[column] else None
                mine = ours.get((row, variant, column))
                line = {
                    "row": row, "variant": variant, "column": column,
                    "ours_mean": mine["mean"] if mine else math.nan,
                    "ours_std": mine["std"] if mine else math.nan,
                    "seeds": mine["n"] if mine else 0,
                    "paper": paper.value if paper else math.nan,
                    "paper_std": paper.std if paper and paper.std is not None else math.nan,
                    "status": "ok" if mine else ("cited" if row in exp.cited_rows else NOT_RUN),
                }
                for key in ("profile", "dataset", "data_label", "model_label", "encoder_label", "budget_label",
                            "config_id"):
                    line[key] = (mine or {}).get(key, "")
                line["comparable"] = bool(mine and mine["comparable"])
                line["diff"] = (mine["mean"] - paper.value) if (mine and paper and mine["comparable"]) else math.nan
                lines.append(line)
    agg = pd.DataFrame(lines)
    return _add_gains(exp, agg)


def _add_gains(exp: Experiment, agg: pd.DataFrame) -> pd.DataFrame:
    """Each line's gain over the base row in its column (ours and the paper's)."""
    agg["gain"] = math.nan
    agg["paper_gain"] = math.nan
    if not exp.base_row or agg.empty:
        return agg
    for column in exp.columns:
        base = agg[(agg.row == exp.base_row) & (agg.column == column)]
        base_ours = base[base.status == "ok"]
        paper_base = exp.paper.get((exp.base_row, column))
        for i in agg.index[agg.column == column]:
            line = agg.loc[i]
            same = base_ours[base_ours.variant == line.variant]
            ref = same if len(same) else base_ours[base_ours.variant == ""]
            if line.status == "ok" and len(ref):
                agg.loc[i, "gain"] = line.ours_mean - float(ref.iloc[0].ours_mean)
            if paper_base is not None and not math.isnan(line.paper):
                agg.loc[i, "paper_gain"] = line.paper - paper_base.value
    return agg


def rank_agreement(exp: Experiment, agg: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Kendall τ between our means and the paper's numbers over the rows that have both, per
    column and per data set (one ranking never mixes two stand-ins; one configuration per row and
    data set: the first); NaN under 3 rows."""
    from scipy.stats import kendalltau

    out: dict[str, dict[str, float]] = {}
    for column in exp.columns:
        sub = agg[(agg.column == column) & (agg.status == "ok") & agg.paper.notna()]
        out[column] = {}
        for dataset, part in sub.groupby("dataset", sort=True):
            part = part.drop_duplicates("row")
            out[column][str(dataset)] = (float(kendalltau(part.ours_mean, part.paper).statistic) if len(part) >= 3
                                         else math.nan)
    return out


def _tau_text(by_dataset: dict[str, float]) -> str:
    """One column's τ values, each named by its stand-in when the column ran on several."""
    named = len(by_dataset) > 1
    return ", ".join(f"{t:+.2f}" + (f" ({STANDIN_TITLES.get(d, d)})" if named else "")
                     for d, t in by_dataset.items() if not math.isnan(t))


def _fmt(mean: float, std: float, n: int = 2) -> str:
    """``mean ± std``; a single seed has no spread to show."""
    if math.isnan(mean):
        return ""
    return f"{mean:.2f}" if math.isnan(std) or n == 1 else f"{mean:.2f} ± {std:.2f}"


def _signed(value: float) -> str:
    return "" if math.isnan(value) else f"{value:+.2f}"


def cell_text(line: pd.Series) -> tuple[str, str]:
    """(ours, paper) strings for one line."""
    ours = _fmt(line.ours_mean, line.ours_std, line.seeds) if line.status == "ok" else line.status
    return ours, _fmt(line.paper, line.paper_std) or "—"


def row_name(line: pd.Series) -> str:
    return f"{line.row} [{line.variant}]" if line.variant else str(line.row)


def _column_modes(exp: Experiment, agg: pd.DataFrame) -> dict[str, bool]:
    """column -> True where its runs are comparable with the paper (Δ), False for stand-ins."""
    modes = {}
    for column in exp.columns:
        ran = agg[(agg.column == column) & (agg.status == "ok")]
        modes[column] = bool(len(ran)) and bool(ran.comparable.all())
    return modes


def column_header(exp: Experiment, agg: pd.DataFrame, column: str, records: list[dict[str, Any]]) -> str:
    """The paper's column name (as the experiment relabels it for what ran, e.g. CPU-hours)."""
    configs = [r.get("config") or r for r in records if r.get("column") == column]
    return exp.column_label(column, configs)


def table_title(exp: Experiment, records: list[dict[str, Any]]) -> str:
    """The experiment's title for what these runs ran."""
    return exp.table_title([r.get("config") or r for r in records])


def ran_on(agg: pd.DataFrame, column: str) -> str:
    """The data a stand-in column really ran on, short (e.g. "digits 16×16, IF 20 (paper: IF 200)")."""
    ran = agg[(agg.column == column) & (agg.status == "ok")]
    return "; ".join(sorted({re.sub(r" \(stand-in for [^)]*\)", "", d) for d in ran.data_label if d}))


def wide_table(exp: Experiment, agg: pd.DataFrame, records: list[dict[str, Any]]) -> pd.DataFrame:
    """The table as printed: one line per row (and configuration), per column ours and paper,
    then Δ (comparable columns) or the gains over the base row (stand-ins)."""
    modes = _column_modes(exp, agg)
    out: dict[str, list[str]] = defaultdict(list)
    keys = agg[["row", "variant"]].drop_duplicates()
    for _, key in keys.iterrows():
        lines = agg[(agg.row == key.row) & (agg.variant == key.variant)]
        out["Method"].append(row_name(lines.iloc[0]))
        for column in exp.columns:
            line = lines[lines.column == column].iloc[0]
            ours, paper = cell_text(line)
            head = column_header(exp, agg, column, records)
            data = ran_on(agg, column)
            out[f"{head} ours" + (f" (on {data})" if data and not modes[column] else "")].append(ours)
            out[f"{head} paper"].append(paper)
            if modes[column]:
                out[f"{head} Δ"].append(_signed(line["diff"]))
            elif exp.base_row and data:
                gains = (_signed(line.gain), _signed(line.paper_gain))
                text = " / ".join(g or "—" for g in gains) if any(gains) else ""
                out[f"{head} gain vs {exp.base_row} (ours / paper)"].append(
                    "(base)" if line.row == exp.base_row else text)
    return pd.DataFrame(out)


def markdown(frame: pd.DataFrame) -> str:
    def esc(text: Any) -> str:
        return str(text).replace("|", "\\|")

    head = "| " + " | ".join(esc(c) for c in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(esc(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body]) + "\n"


def latex(frame: pd.DataFrame) -> str:
    """LaTeX through pandas' Styler, which escapes every special character."""
    text = frame.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1).to_latex(
        hrules=True)
    return text.replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("τ", r"$\tau$").replace("—", "--")


def provenance(exp: Experiment, agg: pd.DataFrame, records: list[dict[str, Any]]) -> list[str]:
    """Sentences saying what ran (data, model, budget) and how to read the comparison."""
    ran = agg[agg.status == "ok"]
    notes = []
    for key, word in (("data_label", "data"), ("model_label", "model"), ("encoder_label", "encoder"),
                      ("budget_label", "budget")):
        values = sorted({v for v in ran[key] if v})
        if values:
            notes.append(f"{word}: {'; '.join(values)}")
    profiles = sorted({p for p in ran.profile if p})
    lines = []
    if notes:
        lines.append("What ran: " + " | ".join(notes) + f" (profile {', '.join(profiles)}).")
    modes = _column_modes(exp, agg)
    if any(modes.values()):
        lines.append("Δ = ours − paper, shown only where data, model and protocol are the paper's.")
    stand_in = [c for c in exp.columns if not modes[c] and (agg[(agg.column == c)].status == "ok").any()]
    if stand_in:
        # a paper-profile run is only incomparable through its overrides (--epochs, --set): no stand-in there
        what = "Columns run with overrides of the paper's protocol" if profiles == ["paper"] else "Stand-in columns"
        heads = ", ".join(column_header(exp, agg, c, records) for c in stand_in)
        lines.append(f"{what} ({heads}): our numbers are not comparable with the paper's; "
                     + (f"compare each method's gain over {exp.base_row} and the methods' ranking. "
                        if exp.base_row else "compare the methods' ranking. "))
        tau = rank_agreement(exp, agg)
        shown = [f"{c}: {text}" for c in stand_in if (text := _tau_text(tau[c]))]
        if shown:
            lines.append("Rank agreement with the paper (Kendall τ over the rows run): " + ", ".join(shown) + ".")
    if len(ran) and ran.seeds.nunique() > 1:
        lines.append(f"Seeds per cell: {int(ran.seeds.min())} to {int(ran.seeds.max())} (every seed of the cell's "
                     f"configuration; the CSV's seeds column gives each cell's count).")
    variants = sorted({v for v in ran.variant if v})
    if variants:
        lines.append("Rows in [brackets] are separate configurations of one cell, never averaged together.")
    missing = [c for c in exp.columns if not (agg[agg.column == c].status == "ok").any()]
    if missing:
        reasons: dict[str, list[str]] = defaultdict(list)
        for column in missing:  # the reasons are the stand-in profiles'; the paper profile can run every column
            reasons["" if profiles == ["paper"] else exp.not_run_reason(column)].append(column)
        lines.append("Not run: " + "; ".join(", ".join(cols) + (f" ({why})" if why else " (no run in these results)")
                                              for why, cols in reasons.items()) + ".")
    return lines


def render_terminal(exp: Experiment, records: list[dict], profile: str | None, console) -> None:
    """Ours beside the paper for every column that has a run. A terminal gets a rich table; a
    pipe or file gets the same table as full-width Markdown, so no number is cut."""
    frame = results_frame(records)
    agg = aggregate(exp, frame, records=records)
    ran_columns = [c for c in exp.columns if (agg[agg.column == c].status == "ok").any()]
    wide = wide_table(exp, agg, records)
    heads = [column_header(exp, agg, k, records) for k in ran_columns]
    keep = ["Method"] + [c for c in wide.columns[1:] if any(c.startswith(h + " ") for h in heads)]
    wide = wide[keep]
    title = f"{exp.name}: {table_title(exp, records)} — {exp.metric_label}: ours (profile {profile}) beside {PAPER}"
    if console.is_terminal:
        from rich.table import Table

        table = Table(title=title, show_lines=True)
        for i, name in enumerate(wide.columns):
            table.add_column(name, justify="left" if i == 0 else "right", overflow="fold")
        for row in wide.itertuples(index=False):
            table.add_row(*[str(v) for v in row])
        console.print(table)
        for line in provenance(exp, agg, records):
            console.print(line, soft_wrap=True, highlight=False)
    else:
        text = f"{title}\n\n{markdown(wide)}\n" + "\n".join(provenance(exp, agg, records)) + "\n"
        console.file.write(text)
        console.file.flush()


def _per_dataset(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """A figure's runs split by data set, one figure each (suffix ``_<dataset>``) when there are
    several: a figure draws one configuration per cell, and cells must not mix stand-ins."""
    if frame.empty:
        return []
    datasets = frame["dataset"].fillna("") if "dataset" in frame else pd.Series("", index=frame.index)
    names = sorted(set(datasets))
    if len(names) == 1:
        return [("", frame)]
    return [(f"_{d or 'unknown'}", frame[datasets == d]) for d in names]


def _figure_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """One configuration per cell for a figure: the one with the most seeds (then the newest)."""
    if frame.empty:
        return frame
    keep = []
    for _, group in frame.groupby(["row", "column"], sort=False):
        counts = group.groupby("config_id").size()
        best = counts[counts == counts.max()].index
        newest = max(best, key=lambda cid: max(Path(d).stat().st_mtime if d and Path(d).exists() else 0
                                               for d in group.loc[group.config_id == cid, "run_dir"]))
        keep.append(group[group.config_id == newest])
    return pd.concat(keep)


def write_report(results: Path, out_dir: Path, names: list[str], profile: str | None = None,
                 where: dict[str, str] | None = None) -> list[Path]:
    """Write every table (md, csv, tex) and figure (png) of ``names``, plus an index README.md.

    ``where`` keeps only runs whose ``load_results`` columns equal the given values (as text)."""
    records = collect_results(results)
    if profile:
        records = [r for r in records if r.get("profile") == profile]
    if where:
        records = select(records, where)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    index = ["# LFM reproduction report", "",
             f"Built by `lfm-bench report` from `{results}`"
             + (f" (profile {profile})" if profile else "") + ". "
             f"Ours: mean ± sample std (n - 1) over the seeds of one configuration; paper: as printed in {PAPER}. "
             "Cells marked *not run* have no finished run; *cited* rows are baselines this suite "
             "does not implement, shown with the paper's numbers. Each table says what really ran "
             "(data, model, budget); a Δ to the paper appears only where those are the paper's.", ""]
    for name in names:
        exp = get_experiment(name)
        mine = [r for r in records if r.get("experiment") == name and exp.includes(r)]
        frame = results_frame(mine)
        agg = aggregate(exp, frame, records=mine)
        wide = wide_table(exp, agg, mine)
        notes = provenance(exp, agg, mine)
        stem = out_dir / name
        atomic_write_text(stem.with_suffix(".csv"), agg.to_csv(index=False))
        body = markdown(wide) + ("\n" + "\n\n".join(notes) + "\n" if notes else "")
        title = table_title(exp, mine)
        atomic_write_text(stem.with_suffix(".md"), f"## {name}: {title}\n\n{exp.metric_label}.\n\n{body}")
        atomic_write_text(stem.with_suffix(".tex"), latex(wide))
        written += [stem.with_suffix(s) for s in (".md", ".csv", ".tex")]
        index.append(f"## {name}: {title}")
        profiles = ", ".join(sorted(set(frame["profile"]))) if not frame.empty else "none"
        ran = int(agg[agg.status == "ok"][["row", "column"]].drop_duplicates().shape[0])
        cells = len(exp.rows) * len(exp.columns)
        index.append(f"{ran} of {cells} cells run (profiles: {profiles}). "
                     f"[Markdown]({name}.md) · [CSV]({name}.csv) · [LaTeX]({name}.tex)")
        if exp.kind == "figure":
            if frame.empty:
                index.append("\nFigure not drawn: no runs.")
            for suffix, part in _per_dataset(frame):
                png = out_dir / f"{name}{suffix}.png"
                exp.plot(_figure_frame(part), png)
                written.append(png)
                index.append(f"\n![{name}{suffix}]({png.name})")
        index.append("")
        index.append(body)
    from lfm_core.claims import write_claims

    written.append(write_claims(records, out_dir))
    index[4:4] = ["The paper's claims, each with its verdict at this scale and the numbers behind it: "
                  "[claims.md](claims.md).", ""]
    atomic_write_text(out_dir / "README.md", "\n".join(index) + "\n")
    written.append(out_dir / "README.md")
    return written


def select(records: list[dict[str, Any]], where: dict[str, str]) -> list[dict[str, Any]]:
    """The records whose ``load_results`` columns equal ``where``'s values (compared as text)."""
    frame = load_results(records)
    keep = pd.Series(True, index=frame.index)
    for key, value in where.items():
        if key not in frame:
            from lfm_core.errors import check_choice

            check_choice("results column", key, sorted(frame.columns))
        keep &= frame[key].map(lambda v: _text(v) == value)
    return [r for r, k in zip(records, keep) if k]


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():  # 12.0 (a column pandas made float) matches "12"
        return str(int(value))
    return str(value)
