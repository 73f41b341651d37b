"""Figures 4 and 5: grouped bars of test error per row and search method."""

from __future__ import annotations

import math

from lfm_core.report import seed_std


def plot_bars(frame, out_path, rows: list[str], columns: list[str], title: str, metric: str = "test_err",
              ylabel: str = "Test error (%)") -> None:
    """Grouped bars (one group per column that has runs, one bar per row): mean ± sample std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cols = [c for c in columns if metric in frame and frame.loc[frame["column"] == c, metric].notna().any()]
    cols = cols or list(columns[:1])
    fig, ax = plt.subplots(figsize=(max(5.5, 2.6 * len(cols) + 2.5), 4.2), constrained_layout=True)
    width = 0.8 / max(1, len(rows))
    x = np.arange(len(cols))
    top = 0.0
    for i, row in enumerate(rows):
        means, stds, ns = [], [], []
        for column in cols:
            vals = frame.loc[(frame["row"] == row) & (frame["column"] == column), metric].dropna() \
                if metric in frame else []
            means.append(float(np.mean(vals)) if len(vals) else np.nan)
            stds.append(seed_std(vals))
            ns.append(len(vals))
        pos = x + (i - (len(rows) - 1) / 2) * width
        bars = ax.bar(pos, means, width, yerr=stds, capsize=3, label=row)
        for b, m, n in zip(bars, means, ns):
            if not math.isnan(m):
                ax.annotate(f"{m:.1f}", (b.get_x() + b.get_width() / 2, m), ha="center", va="bottom", fontsize=7,
                            xytext=(0, 2), textcoords="offset points")
                top = max(top, m)
    profiles = ", ".join(sorted({str(p) for p in frame.get("profile", [])})) if len(frame) else ""
    datasets = ", ".join(sorted({str(d) for d in frame.get("dataset", []) if d})) if len(frame) else ""
    seeds = int(frame["seed"].nunique()) if "seed" in frame and len(frame) else 0
    ax.set_xticks(x, cols)
    ax.set_xlabel("search method (LFM applied to)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, max(1.0, top * 1.18))
    ax.set_title(f"{title}\nours: profile {profiles or '-'}, data {datasets or '-'}, {seeds} seed(s); "
                 "paper values not printed", fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
