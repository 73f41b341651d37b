"""Figures 6-8 drawn with matplotlib from the collected results."""

from __future__ import annotations

import numpy as np

from lfm_core.report import seed_std


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _provenance(frame) -> str:
    """Which profile and data set the bars or matrices come from (e.g. digits standing in for CIFAR)."""
    profiles = ", ".join(sorted(set(frame["profile"])))
    datasets = ", ".join(sorted({str(d) for d in frame.get("dataset", []) if d}))
    return f"profile {profiles}; data {datasets or '?'}"


def plot_confusions(frame, out_path, rows: list[str]) -> None:
    """Row-normalised confusion matrices (per-class recall, %), averaged over seeds, side by side."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(rows), figsize=(5.2 * len(rows), 4.6), constrained_layout=True)
    for ax, row in zip(np.atleast_1d(axes), rows):
        mats = [np.asarray(c, dtype=float) for c in frame.loc[frame["row"] == row, "confusion"] if c is not None]
        if not mats:
            ax.set_title(f"{row}: not run")
            ax.axis("off")
            continue
        conf = np.mean(mats, axis=0)
        recall = 100 * conf / np.maximum(conf.sum(1, keepdims=True), 1)
        im = ax.imshow(recall, vmin=0, vmax=100, cmap="Blues")
        k = recall.shape[0]
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{recall[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if recall[i, j] > 60 else "black")
        acc = 100 * np.trace(conf) / max(conf.sum(), 1)
        ax.set_title(f"{row} (accuracy {acc:.1f}%, {len(mats)} seeds)")
        ax.text(1.0, -0.14, _provenance(frame), transform=ax.transAxes, ha="right", fontsize=7, color="gray")
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
    fig.colorbar(im, ax=axes, label="recall (%)", shrink=0.8)
    fig.savefig(out_path, dpi=120)
    plt.close(fig)


def plot_network_bars(frame, out_path, rows: list[str], columns: list[str], title: str) -> None:
    """Grouped bars: test accuracy per noise rate for each (network, method), mean ± sample std over seeds."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2), constrained_layout=True)
    width = 0.8 / len(rows)
    x = np.arange(len(columns))
    for i, row in enumerate(rows):
        means, stds = [], []
        for column in columns:
            vals = frame.loc[(frame["row"] == row) & (frame["column"] == column), "test_acc"].dropna()
            means.append(vals.mean() if len(vals) else np.nan)
            stds.append(seed_std(vals))
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, means, width, yerr=stds, capsize=3, label=row)
    for j, column in enumerate(columns):
        if not (frame["column"] == column).any():
            ax.text(x[j], 50, "not run", ha="center", va="center", color="gray")
    ax.set_xticks(x, columns)
    ax.text(1.0, -0.16, _provenance(frame), transform=ax.transAxes, ha="right", fontsize=7, color="gray")
    ax.set_xlabel("flip-noise rate")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8)
    fig.savefig(out_path, dpi=120)
    plt.close(fig)


DIAGNOSTIC_PANELS = (
    ("a_clean", "a_noisy", "mean weight a: clean (solid) vs corrupted (dashed)"),
    ("a_auroc", None, "AUROC of a as a noise detector (0.5 = chance)"),
    ("a_mean", None, "mean a (W2's effective step scale)"),
    ("test_acc", None, "W2 test accuracy (%)"),
)


def _histories(frame, row: str, column: str) -> list[list[dict]]:
    """Per-epoch diagnostic lines of each seed: the result's ``history``, else its run's metrics.jsonl."""
    import json
    from pathlib import Path

    sub = frame[(frame["row"] == row) & (frame["column"] == column)]
    out = []
    for _, rec in sub.iterrows():
        hist = rec.get("history")
        if not isinstance(hist, list) and isinstance(rec.get("run_dir"), str):
            path = Path(rec["run_dir"]) / "metrics.jsonl"
            hist = [json.loads(t) for t in path.read_text().splitlines() if t.strip()] if path.exists() else None
        if isinstance(hist, list) and hist:
            out.append(hist)
    return out


def plot_diagnostics(frame, out_path, rows: list[str], column: str) -> None:
    """Per-epoch weight diagnostics (mean over seeds) of each row in one column: how a treats
    clean vs corrupted examples, how well it detects them, its mean, and W2's accuracy."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(DIAGNOSTIC_PANELS), figsize=(4.4 * len(DIAGNOSTIC_PANELS) + 3.0, 4.0),
                             layout="constrained")
    colors = plt.get_cmap("tab20").colors  # 20 distinct colours: one per ablation row
    for i, row in enumerate(rows):
        hists = _histories(frame, row, column)
        if not hists:
            continue
        color = colors[i % len(colors)]
        for ax, (key, second, title) in zip(axes, DIAGNOSTIC_PANELS):
            for k, style in ((key, "-"), (second, "--")):
                if k is None:
                    continue
                n = min(len(h) for h in hists)
                vals = np.array([[h[e].get(k, np.nan) for e in range(n)] for h in hists], dtype=float)
                if np.isnan(vals).all():
                    continue
                ax.plot(np.arange(1, n + 1), np.nanmean(vals, axis=0), style, color=color,
                        label=f"{row} ({len(hists)} seeds)" if style == "-" and ax is axes[0] else None)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("epoch")
    fig.legend(fontsize=7, loc="outside right upper")
    fig.suptitle(f"{column}; {_provenance(frame)}", fontsize=9)
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
