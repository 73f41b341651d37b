"""Why LFM-DR trails the meta baselines at cpu scale: an ablation of the LFM weighting.

Rows are variants of the method (its options are part of each cell's params, so every variant
is its own run), columns the two settings of the issue: 40% flip noise and the IF 20 long tail
(digits, or photo patches with ``--standin photo_patches``, standing in for CIFAR-10 on the
cpu/smoke profiles). Starting from the paper's LFM-DR, one factor is added at a time; starting
from LFM-DR+ (ours), one is removed at a time:

* the encoder: the random small CNN of the cpu profile vs the label-free ``pixels`` features;
* the Adam learning rate of the upper variables (paper setting 0.01; 0.1);
* normalising a in W2's loss (``sum a l / sum a`` instead of ``mean(a l)``: eq. 5 keeps
  a >= 0.5, so the paper's loss also shrinks W2's step by mean(a));
* B fixed at 1 (its learning rate 0): how much the B-weighted W1 contributes (B reaches the
  meta loss only through W1's mistakes u, so with a high learning rate it learns to up-weight
  corrupted examples and W1 degrades);
* the learned offset c inside the sigmoid (lets a fall below 0.5).

W1's accuracy (``test_acc_w1``) is recorded beside W2's in every run. The figure shows the
per-epoch diagnostics (a on clean vs corrupted examples, its AUROC as a noise detector, mean a).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import click

from lfm_core.errors import UsageError
from lfm_core.experiments import Cell
from lfm_dr.experiments import DRExperiment, long_tail_column, noise_column

SMALLCNN, PIXELS = {"encoder": "smallcnn"}, {"encoder": "pixels"}
LR_01 = {"lr_b": 0.1, "lr_r": 0.1}
# row -> (registered method, its options beside the profile's)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "LFM-DR (paper)": ("lfm", dict(SMALLCNN)),
    "+ pixel encoder": ("lfm", dict(PIXELS)),
    "+ upper lr 0.1 for b/r/V": ("lfm", {**SMALLCNN, **LR_01, "lr_v": 0.1}),
    "+ a normalised in W2's loss": ("lfm", {**SMALLCNN, "normalize_a": True}),
    "B fixed at 1": ("lfm", {**SMALLCNN, "lr_b": 0.0}),
    "LFM-DR+ (ours)": ("lfm_plus", dict(PIXELS)),
    "LFM-DR+ w/o offset c": ("lfm_plus", {**PIXELS, "offset": False}),
    "LFM-DR+ w/o pixel encoder": ("lfm_plus", dict(SMALLCNN)),
    "LFM-DR+ w/o upper lr 0.1": ("lfm_plus", {**PIXELS, "lr_b": 0.01, "lr_r": 0.01, "lr_c": 0.01}),
    "LFM-DR+ with B fixed at 1": ("lfm_plus", {**PIXELS, "lr_b": 0.0}),
    "LFM-DR+ with a normalised": ("lfm_plus", {**PIXELS, "normalize_a": True}),
}
OPTION_KEYS = ("encoder", "lr_b", "lr_r", "lr_v", "lr_c", "normalize_a", "offset")
# per-epoch numbers a result keeps (the figure reads them; the full lines stay in metrics.jsonl)
HISTORY_PREFIXES = ("epoch", "test_acc", "a_", "b_", "r_", "c", "w_")


class AblationDR(DRExperiment):
    """Ablation of LFM-DR's weighting at 40% flip and IF 20 long tail (beyond the paper)."""

    name = "ablation_dr"
    kind = "figure"
    title = "Ablation of the LFM-DR weighting (beyond the paper): W2 test accuracy (%)"
    rows = list(VARIANTS)
    row_methods = {row: method for row, (method, _) in VARIANTS.items()}
    column_specs = (noise_column("CIFAR-10", 0.4, "flip"), long_tail_column("CIFAR-10", 20))
    seeds = {"smoke": [0], "cpu": [0, 1, 2, 3, 4], "paper": [0, 1, 2]}
    smoke_rows = ("LFM-DR (paper)", "LFM-DR+ (ours)")
    base_row = "LFM-DR (paper)"  # each variant's gain is over the paper's method

    def options(self):
        """``--methods`` picks variants; ``--epochs`` and ``--standin`` are every DR experiment's
        (the variants fix their engine and encoder, so the other DR options do not apply)."""
        shared = {o.name: o for o in super().options()}
        return [
            click.Option(["--methods"], default=None,
                         help="Comma-separated variants (rows) to run, or 'all' (the default; smoke: two)."),
            shared["epochs"],
            shared["standin"],
        ]

    def run_rows(self, profile, options):
        text = options.get("methods")
        if not text:
            return list(self.smoke_rows) if profile == "smoke" else list(self.rows)
        if text == "all":
            return list(self.rows)
        rows = [r.strip() for r in text.split(",") if r.strip()]
        for r in rows:
            if r not in VARIANTS:
                raise UsageError(f"unknown variant {r!r} for --methods. Valid choices: {', '.join(self.rows)}, all.")
        return rows

    def run_columns(self, profile, options):
        return self.columns[:1] if profile == "smoke" else list(self.columns)

    def validate(self, profile, options):
        self.run_rows(profile, options)
        super().validate(profile, options)

    def describe(self, profile, options):
        return super().describe(profile, options) + " Variants of LFM-DR; W1's accuracy is kept as test_acc_w1."

    def cells(self, profile, options):
        cells = []
        for column in self.run_columns(profile, options):
            params = self.column_params(column, profile, options)
            for row in self.run_rows(profile, options):
                method, variant = VARIANTS[row]
                cells.append(Cell(row, column, {**params, "method": method, "model": self.model, "engine": "exact",
                                                **variant}))
        return cells

    def settings(self, cell, profile, options):
        settings = super().settings(cell, profile, options)
        opts = {**settings.method_options, **{k: cell.params[k] for k in OPTION_KEYS if k in cell.params}}
        if opts.get("encoder") in ("smallcnn", "pixels"):  # the variants' encoders have no pretrained weights
            opts["pretrained"] = False  # (the paper profile's True is its ResNet-18's)
        return replace(settings, method_options=opts)

    def run_cell(self, cell, profile, seed, ctx):
        metrics = super().run_cell(cell, profile, seed, ctx)
        metrics["history"] = [{k: v for k, v in line.items() if k.startswith(HISTORY_PREFIXES)}
                              for line in ctx.metrics]
        return metrics

    def plot(self, frame, out_path):
        from lfm_dr.figures import plot_diagnostics

        plot_diagnostics(frame, out_path, [r for r in self.rows if r in set(frame["row"])], self.columns[0])
