"""Tables and figures rebuilt from run directories, side by side with the paper's numbers.

The DomainBed ``collect_results`` idea: every ``result.json`` under a results root is one
finished (cell, seed); pandas aggregates mean and std over seeds; cells that were not run are
marked "not run", never left blank or invented.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from lfm_core.experiments import Experiment, get_experiment
from lfm_core.io import atomic_write_text
from lfm_core.runner import collect_results

NOT_RUN = "not run"


def results_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for rec in records:
        base = {k: rec.get(k) for k in ("experiment", "profile", "row", "column", "seed", "wall_s")}
        base["dataset"] = (rec.get("params") or {}).get("dataset", "")
        for key, value in (rec.get("metrics") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                base[key] = float(value)
            else:
                base[key] = value  # e.g. a confusion matrix for a figure
        rows.append(base)
    return pd.DataFrame(rows)


def aggregate(exp: Experiment, frame: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    """One line per (row, column): ours (mean, std, n seeds, profile, data set) and the paper's."""
    metric = metric or exp.metric
    ours: dict[tuple[str, str], dict[str, Any]] = {}
    if not frame.empty and metric in frame:
        sub = frame[(frame["experiment"] == exp.name) & frame[metric].notna()]
        for (row, column), group in sub.groupby(["row", "column"], sort=False):
            values = group[metric]
            ours[(row, column)] = {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=0)) if len(values) > 1 else 0.0,
                "n": int(len(values)),
                "profile": ",".join(sorted(set(group["profile"]))),
                "dataset": ",".join(sorted(set(str(d) for d in group["dataset"] if d))),
            }
    lines = []
    for row in exp.rows:
        for column in exp.columns:
            paper = exp.paper.get((row, column))
            mine = ours.get((row, column))
            lines.append({
                "row": row,
                "column": column,
                "ours_mean": mine["mean"] if mine else math.nan,
                "ours_std": mine["std"] if mine else math.nan,
                "seeds": mine["n"] if mine else 0,
                "profile": mine["profile"] if mine else "",
                "dataset": mine["dataset"] if mine else "",
                "paper": paper.value if paper else math.nan,
                "paper_std": paper.std if paper and paper.std is not None else math.nan,
                "diff": (mine["mean"] - paper.value) if (mine and paper) else math.nan,
                "status": "ok" if mine else ("cited" if row in exp.cited_rows else NOT_RUN),
            })
    return pd.DataFrame(lines)


def _fmt(mean: float, std: float) -> str:
    if math.isnan(mean):
        return ""
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def cell_text(line: pd.Series) -> tuple[str, str]:
    """(ours, paper) strings for one (row, column)."""
    ours = _fmt(line.ours_mean, line.ours_std) if line.status == "ok" else line.status
    return ours, _fmt(line.paper, line.paper_std) or "—"


def render_terminal(exp: Experiment, records: list[dict], profile: str | None, console) -> None:
    """Ours beside the paper for every column that has a run (the others are listed below)."""
    from rich.table import Table

    agg = aggregate(exp, results_frame(records))
    ran = [c for c in exp.columns if (agg[(agg.column == c)].status == "ok").any()]
    table = Table(title=f"{exp.name}: {exp.title}\n{exp.metric_label}: ours (profile {profile}) / paper",
                  show_lines=True)
    table.add_column("method", no_wrap=True)
    for column in ran:
        table.add_column(column, justify="right", no_wrap=True)
    for row in exp.rows:
        cells = []
        for column in ran:
            line = agg[(agg.row == row) & (agg.column == column)].iloc[0]
            ours, paper = cell_text(line)
            style = "bold" if line.status == "ok" else "dim"
            cells.append(f"[{style}]{ours}[/]\n[dim]paper {paper}[/]")
        table.add_row(row, *cells)
    console.print(table)
    datasets = sorted({d for d in agg.dataset if d})
    if datasets:
        console.print(f"ours: mean ± std over seeds on {', '.join(datasets)}; "
                      f"paper: {exp.name} as printed in Zhang et al. 2025.")
    missing = [c for c in exp.columns if c not in ran]
    if missing:
        console.print(f"columns not run with this profile/data: {', '.join(missing)}")


def markdown_table(exp: Experiment, agg: pd.DataFrame) -> str:
    head = ["method"] + [f"{c} ours | {c} paper | Δ" for c in exp.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * (1 + 3 * len(exp.columns))]
    for row in exp.rows:
        parts = [row]
        for column in exp.columns:
            line = agg[(agg.row == row) & (agg.column == column)].iloc[0]
            ours, paper = cell_text(line)
            diff = "" if math.isnan(line["diff"]) else f"{line['diff']:+.2f}"
            parts += [ours, paper, diff]
        lines.append("| " + " | ".join(parts) + " |")
    return "\n".join(lines) + "\n"


def latex_table(exp: Experiment, agg: pd.DataFrame) -> str:
    cols = "l" + "rr" * len(exp.columns)
    head = " & ".join(["Method"] + [f"\\multicolumn{{2}}{{c}}{{{_tex(c)}}}" for c in exp.columns])
    sub = " & ".join([""] + ["Ours & Paper"] * len(exp.columns))
    body = []
    for row in exp.rows:
        parts = [_tex(row)]
        for column in exp.columns:
            line = agg[(agg.row == row) & (agg.column == column)].iloc[0]
            ours, paper = cell_text(line)
            parts += [_tex(ours).replace("±", "$\\pm$"), _tex(paper).replace("±", "$\\pm$")]
        body.append(" & ".join(parts) + r" \\")
    return "\n".join([
        r"\begin{tabular}{" + cols + "}", r"\toprule", head + r" \\", sub + r" \\", r"\midrule",
        *body, r"\bottomrule", r"\end{tabular}", "",
    ])


def _tex(text: str) -> str:
    return str(text).replace("%", r"\%").replace("_", r"\_").replace("&", r"\&").replace("—", "--")


def write_report(results: Path, out_dir: Path, names: list[str], profile: str | None = None) -> list[Path]:
    """Write every table (md, csv, tex) and figure (png) of ``names``, plus an index README.md."""
    records = collect_results(results)
    if profile:
        records = [r for r in records if r.get("profile") == profile]
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    index = ["# LFM reproduction report", "",
             f"Built by `lfm-bench report` from `{results}`"
             + (f" (profile {profile})" if profile else "") + ". "
             "Ours: mean ± std over seeds; paper: as printed in Zhang et al., IEEE TAI 2025. "
             "Cells marked *not run* have no finished run; *cited* rows are baselines this suite "
             "does not implement, shown with the paper's numbers.", ""]
    for name in names:
        exp = get_experiment(name)
        frame = results_frame([r for r in records if r.get("experiment") == name and exp.includes(r)])
        agg = aggregate(exp, frame)
        stem = out_dir / name
        csv = agg.to_csv(index=False)
        atomic_write_text(stem.with_suffix(".csv"), csv)
        md = f"## {name}: {exp.title}\n\n{exp.metric_label}.\n\n" + markdown_table(exp, agg)
        atomic_write_text(stem.with_suffix(".md"), md)
        atomic_write_text(stem.with_suffix(".tex"), latex_table(exp, agg))
        written += [stem.with_suffix(s) for s in (".md", ".csv", ".tex")]
        index.append(f"## {name}: {exp.title}")
        sub = frame
        profiles = ", ".join(sorted(set(sub["profile"]))) if not sub.empty else "none"
        ran = int((agg.status == "ok").sum())
        index.append(f"{ran} of {len(agg)} cells run (profiles: {profiles}). "
                     f"[Markdown]({name}.md) · [CSV]({name}.csv) · [LaTeX]({name}.tex)")
        if exp.kind == "figure":
            png = stem.with_suffix(".png")
            if not sub.empty:
                exp.plot(sub, png)
                written.append(png)
                index.append(f"\n![{name}]({name}.png)")
            else:
                index.append("\nFigure not drawn: no runs.")
        index.append("")
        index.append(markdown_table(exp, agg))
    atomic_write_text(out_dir / "README.md", "\n".join(index) + "\n")
    written.append(out_dir / "README.md")
    return written
