"""The paper's data-reweighting tables (VI-IX) and figures (6-8): one declarative spec each.

A spec holds the table's rows (row -> registered method, ``row_methods``; the other rows are
cited), its columns as parameters (``DRColumn``: data set, noise type and rate, or imbalance
factor), the columns a stand-in profile can fill and why the others cannot run here, the seeds
per profile, the paper's numbers as printed and the paper's claims about it. Titles and column
headers name the noise that ran. The machinery they share (profiles, resolution into a run's
config, the training run) is :mod:`lfm_dr.experiments`.
"""

from __future__ import annotations

from typing import Any

import click

from lfm_core.claims import Claim, Comparison, accuracy_above, rarest_class_recall
from lfm_core.data import load_dataset, make_splits
from lfm_core.errors import DataNotFoundError, UsageError, check_choice
from lfm_core.paper import paper_table
from lfm_dr.experiments import (
    DR_PROFILES,
    NOISE_TITLES,
    PLUS_ROW,
    DRColumn,
    DRExperiment,
    long_tail_column,
    noise_column,
    standin_of,
)

NOISE_RATES = (0.0, 0.2, 0.4)
# table row -> registered method, for every row this suite runs (the others are cited)
DR_ROW_METHODS = {
    "Base Model": "ce",
    "Focal Loss": "focal",
    "Class-Balance": "class_balanced",
    "Co-teaching": "coteaching",
    "Fine-tuning": "finetune",
    "L2RW": "l2rw",
    "GLC": "glc",
    "Meta-Net": "mwn",
    "LFM-DR": "lfm",
    PLUS_ROW: "lfm_plus",
}

T7_ROWS = ["Base Model", "Reed-Hard", "Self-paced", "Focal Loss", "Co-teaching", "D2L", "Fine-tuning",
           "MentorNet", "L2RW", "GLC", "Meta-Net", "LFM-DR", PLUS_ROW]
T7_PAPER_ROWS = T7_ROWS[:-1]  # LFM-DR+ is beyond the paper
T7_COLUMNS = tuple(noise_column(d, r) for d in ("CIFAR-10", "CIFAR-100") for r in NOISE_RATES)
T7_COLS = [c.label for c in T7_COLUMNS]
NOISE_CLAIM_COLUMNS = ("CIFAR-10 20%", "CIFAR-10 40%", "CIFAR-100 20%", "CIFAR-100 40%")


def noise_columns(noise: str, data: tuple[str, ...] = ("CIFAR-10", "CIFAR-100")) -> tuple[DRColumn, ...]:
    """The 0/20/40% columns of a noise table whose paper ran ``noise``."""
    return tuple(DRColumn(c.label, c.data, noise, c.rate) for c in T7_COLUMNS if c.data in data)


class NoiseTable(DRExperiment):
    """A table under label noise; ``--noise`` runs another noise type, and the title, headers
    and paper columns then say so."""

    paper_noise = "flip"
    rows = T7_ROWS  # Tables VII and VIII share their rows and cited baselines
    row_methods = {r: DR_ROW_METHODS[r] for r in T7_ROWS if r in DR_ROW_METHODS}
    cited_rows = ("Reed-Hard", "Self-paced", "D2L", "MentorNet")

    def options(self):
        return [
            click.Option(["--noise"], type=click.Choice(list(NOISE_TITLES)), default=self.paper_noise,
                         show_default=True, help="Label-noise type."),
            click.Option(["--rates"], default=None,
                         help="Comma-separated noise rates to run, among the table's 0, 0.2, 0.4 (default: all)."),
        ] + super().options()

    def validate(self, profile, options):
        self.selected_rates(options)
        super().validate(profile, options)

    @staticmethod
    def selected_rates(options) -> tuple[float, ...]:
        text = options.get("rates")
        if not text:
            return NOISE_RATES
        rates = []
        for item in text.split(","):
            try:
                rate = float(item)
            except ValueError:
                raise UsageError(f"bad noise rate {item!r} in --rates: expected numbers such as 0.2,0.4") from None
            if not 0.0 <= rate <= 1.0:
                raise UsageError(f"noise rate {rate:g} is outside [0, 1]")
            rates.append(check_choice("noise rate for this table", rate, NOISE_RATES))
        return tuple(rates)

    def table_columns(self, profile, options):
        rates = self.selected_rates(options)
        return [c.label for c in self.column_specs if c.rate in rates]

    def noise_type(self, spec, options):
        return options.get("noise") or spec.noise

    def includes(self, record):
        """The report shows the table's own noise type (runs with --noise X stay in their run dirs)."""
        return (record.get("params") or {}).get("noise", self.paper_noise) == self.paper_noise

    def ran_noises(self, configs: list[dict[str, Any]]) -> list[str]:
        """The noise types these runs ran that are not the paper's."""
        ran = ((c.get("params") or {}).get("noise", self.paper_noise) for c in configs)
        return [n for n in dict.fromkeys(ran) if n != self.paper_noise]

    def table_title(self, configs):
        other = self.ran_noises(configs)
        if not other:
            return self.title
        ran = " and ".join(NOISE_TITLES[n] for n in other)
        return self.title.replace(NOISE_TITLES[self.paper_noise], f"{ran} (paper: {NOISE_TITLES[self.paper_noise]})")

    def column_label(self, column, configs):
        spec = self.column_spec(column)
        other = self.ran_noises(configs)
        return noise_column(spec.data, spec.rate, "/".join(other)).label if other else column

    def paper_matches(self, column, configs):
        return not self.ran_noises(configs)


class Table7(NoiseTable):
    """ResNet-32 under flip noise (CIFAR-10/100, 0/20/40%)."""

    name = "table7"
    title = f"Test accuracy (%) of ResNet-32 under {NOISE_TITLES['flip']}"
    column_specs = noise_columns("flip")
    claims = (Claim("LFM-DR is above every implemented baseline under flip noise (20%, 40%)", "Table VII",
                    (accuracy_above("table7", "LFM-DR", NOISE_CLAIM_COLUMNS, not_baselines=(PLUS_ROW,)),)),)
    paper = paper_table(T7_PAPER_ROWS, T7_COLS, """
92.89±0.32 76.83±2.30 70.77±2.31 70.50±0.12 50.86±0.27 43.01±1.16
92.31±0.25 88.28±0.36 81.06±0.76 69.02±0.32 60.27±0.76 50.40±1.01
88.52±0.21 87.03±0.34 81.63±0.52 67.55±0.27 63.63±0.30 53.51±0.53
93.03±0.16 86.45±0.19 80.45±0.97 70.02±0.53 61.87±0.30 54.13±0.40
89.87±0.10 82.83±0.85 75.41±0.21 63.31±0.05 54.13±0.55 44.85±0.81
92.02±0.14 87.66±0.40 83.89±0.46 68.11±0.26 63.48±0.53 51.83±0.33
93.23±0.23 82.47±3.64 74.07±1.65 70.72±0.22 56.98±0.50 46.37±0.25
92.13±0.30 86.36±0.31 81.76±0.28 70.24±0.21 61.97±0.47 52.66±0.56
89.25±0.37 87.86±0.36 85.66±0.51 64.11±1.09 57.47±1.16 50.98±1.55
91.02±0.20 89.68±0.33 88.92±0.24 65.42±0.23 63.07±0.53 62.22±0.62
92.04±0.15 90.33±0.61 87.54±0.23 70.11±0.33 64.22±0.28 58.64±0.47
92.85±0.11 91.28±0.58 89.06±0.17 70.93±0.44 65.88±0.27 60.73±0.51
""")


class Table8(NoiseTable):
    """WRN-28-10 under uniform noise (CIFAR-10/100, 0/20/40%)."""

    name = "table8"
    title = f"Test accuracy (%) of WRN-28-10 under {NOISE_TITLES['uniform']}"
    paper_noise = "uniform"
    column_specs = noise_columns("uniform")
    model = "wrn28_10"
    claims = (Claim("LFM-DR is above every implemented baseline under uniform noise (20%, 40%)", "Table VIII",
                    (accuracy_above("table8", "LFM-DR", NOISE_CLAIM_COLUMNS, not_baselines=(PLUS_ROW,)),)),)
    paper = paper_table(T7_PAPER_ROWS, T7_COLS, """
95.60±0.22 68.07±1.23 53.12±3.03 79.95±1.26 51.11±0.42 30.92±0.33
94.38±0.14 81.26±0.51 73.53±1.54 64.45±1.02 51.27±1.18 26.95±0.98
90.81±0.34 86.41±0.29 53.10±1.78 59.79±0.46 46.31±2.45 19.08±0.57
95.70±0.15 75.96±1.31 51.87±1.19 81.04±0.24 51.19±0.46 27.70±3.77
88.67±0.25 74.81±0.34 73.06±0.25 61.80±0.25 46.20±0.15 35.67±1.25
94.64±0.33 85.60±0.13 68.02±0.41 66.17±1.42 52.10±0.97 41.11±0.30
95.65±0.15 80.47±0.25 78.75±2.40 80.88±0.21 52.49±0.74 38.16±0.38
94.35±0.42 87.33±0.22 82.80±1.35 73.26±1.23 61.39±3.99 36.87±1.47
92.38±0.10 86.92±0.19 82.24±0.36 72.99±0.58 60.79±0.91 48.15±0.34
94.30±0.10 88.28±0.03 83.49±0.24 73.75±0.51 61.31±0.22 50.81±1.00
94.52±0.25 89.27±0.28 84.07±0.33 78.76±0.24 67.73±0.26 58.75±0.11
95.56±0.11 89.66±0.58 84.78±0.17 80.64±0.44 68.71±0.27 60.74±0.51
""")


T6_ROWS = ["Base Model", "Focal Loss", "Class-Balance", "L2RW", "Meta-Net", "LFM-DR", PLUS_ROW]
IFS = (200, 100, 50, 20, 10, 1)
T6_COLUMNS = tuple(long_tail_column(d, f) for d in ("CIFAR-10", "CIFAR-100") for f in IFS)
T6_COLS = [c.label for c in T6_COLUMNS]
# digits has ~170 examples per class: factors above this leave a class empty or nearly so
STANDIN_MAX_FACTOR = 20.0


class Table6(DRExperiment):
    """ResNet-32 on long-tailed CIFAR-10/100 (imbalance factors 200 ... 1)."""

    name = "table6"
    title = "Test accuracy (%) of ResNet-32 on long-tailed CIFAR-10 and CIFAR-100"
    rows = T6_ROWS
    row_methods = {r: DR_ROW_METHODS[r] for r in T6_ROWS}
    column_specs = T6_COLUMNS
    paper = paper_table(T6_ROWS[:-1], T6_COLS, """
65.68 70.36 74.81 82.23 86.39 92.89 34.84 38.32 43.85 51.44 55.71 70.50
65.29 70.38 76.71 82.76 86.66 93.03 35.62 38.41 44.32 51.95 55.78 70.52
68.89 74.57 79.27 84.36 87.49 92.89 36.23 39.60 45.32 52.59 57.99 70.50
66.51 74.16 78.93 82.12 85.19 89.25 33.38 40.23 44.44 51.64 53.73 64.11
68.91 75.21 80.06 84.94 87.84 92.66 37.91 42.09 46.74 54.37 58.46 70.37
73.72 78.89 83.46 86.98 89.24 92.92 39.08 43.27 47.42 56.10 59.70 70.58
""")

    standin_columns = tuple(c.label for c in T6_COLUMNS if c.data == "CIFAR-10" and c.factor <= STANDIN_MAX_FACTOR)
    smoke_column = "CIFAR-10 IF 20"

    def not_run_reason(self, column):
        spec = self.column_spec(column)
        if spec.cifar == "cifar10" and spec.factor > STANDIN_MAX_FACTOR:
            return (f"digits (~170 images per class) cannot hold imbalance factors above {STANDIN_MAX_FACTOR:g}; "
                    "needs CIFAR-10")
        return super().not_run_reason(column)


class Table9(DRExperiment):
    """VGG19-BN on ANIMAL-10N (real label noise)."""

    name = "table9"
    title = "Classification accuracy (%) on the ANIMAL-10N test set"
    model = "vgg19_bn"
    rows = ["NCT", "PLC", "SELFIE", "CE Dropout", "Vgg19-BN", "LFM"]
    column_specs = (DRColumn("ANIMAL-10N", "ANIMAL-10N"),)
    cited_rows = ("NCT", "PLC", "SELFIE", "CE Dropout")
    paper = paper_table(rows, ["ANIMAL-10N"], "84.1\n83.4\n81.8\n81.3\n79.4\n86.4")
    row_methods = {"Vgg19-BN": "ce", "LFM": "lfm"}
    image_size = 32  # VGG's five poolings need at least 32x32

    base_row = "Vgg19-BN"
    profile_rows = {p: ("Vgg19-BN", "LFM") for p in DR_PROFILES}

    def dataset_for(self, column, profile, options):
        return "imagefolder" if DR_PROFILES[profile].data is None else standin_of(profile, options)

    def validate(self, profile, options):
        if DR_PROFILES[profile].data is None and not options.get("data_root"):
            raise DataNotFoundError("table9's paper profile needs ANIMAL-10N: pass --data-root DIR holding "
                                    "training/ and testing/ (file names like 3_00012.jpg)")
        super().validate(profile, options)

    def describe(self, profile, options):
        if DR_PROFILES[profile].data is None:
            return "data: ANIMAL-10N from --data-root (64x64, VGG19-BN)."
        return ("data: digits stand in for ANIMAL-10N (no real label noise: expect no gain); "
                "paper: --profile paper --data-root DIR.")

    def meta_per_class(self, params, profile):
        return 100 if params["dataset"] == "imagefolder" else super().meta_per_class(params, profile)

    def model_kwargs(self, model, profile):
        # VGG's five poolings need at least 32x32 (digits), ANIMAL-10N is 64x64
        size = 64 if DR_PROFILES[profile].data is None else self.image_size
        return {**super().model_kwargs(model, profile), "image_size": size}

    def build_splits(self, settings, seed, ctx):
        data = settings.data
        if data.dataset != "imagefolder":
            return super().build_splits(settings, seed, ctx)
        bundle = load_dataset("imagefolder", root=ctx.data_root, image_size=64)
        return make_splits(bundle, meta_per_class=data.meta_per_class, seed=seed, max_train=data.max_train)


class Figure6(Table6):
    """Confusion matrices, long-tailed CIFAR-10 IF 200, base model vs LFM."""

    name = "figure6"
    kind = "figure"
    title = "Confusion matrices on long-tailed CIFAR-10 (IF 200): base model vs LFM"
    metric_label = "Test accuracy (%); the figure shows per-class recall"
    rows = ["Base Model", "LFM-DR"]
    row_methods = {r: DR_ROW_METHODS[r] for r in rows}
    column_specs = (long_tail_column("CIFAR-10", 200),)
    paper = {}
    cited_rows = ()
    # the paper's text: recall of the rarest class (class 9) rises from 14.4% to 47.3%
    claims = (Claim("LFM-DR improves the rarest class at high imbalance", "Fig. 6 (class 9: 14.4% -> 47.3%)",
                    tuple(Comparison(exp, "LFM-DR", "Base Model", cols, True, rarest_class_recall,
                                     "rarest-class recall (%)")
                          for exp, cols in (("figure6", ("CIFAR-10 IF 200",)),
                                            ("table6", ("CIFAR-10 IF 200", "CIFAR-100 IF 200", "CIFAR-10 IF 20"))))),)

    profile_rows = {p: ("Base Model", "LFM-DR") for p in DR_PROFILES}
    standin_columns = ("CIFAR-10 IF 200",)
    smoke_column = "CIFAR-10 IF 200"

    def imbalance_factor(self, spec, profile):
        # digits cannot hold IF 200 (a class would be empty): IF 20 stands in on the cpu/smoke profiles
        return spec.factor if DR_PROFILES[profile].data is None else STANDIN_MAX_FACTOR

    def plot(self, frame, out_path):
        from lfm_dr.figures import plot_confusions

        plot_confusions(frame, out_path, self.rows)


FLIP_NETWORK_ROWS = ["ResNet-32 Base Model", "ResNet-32 LFM-DR", "WRN-28-10 Base Model", "WRN-28-10 LFM-DR"]


class FlipNetworks(NoiseTable):
    """Base model vs LFM-DR with two networks: a row is "<network> <table row>"."""

    kind = "figure"
    rows = FLIP_NETWORK_ROWS
    row_methods = {r: DR_ROW_METHODS[r.partition(" ")[2]] for r in FLIP_NETWORK_ROWS}
    cited_rows = ()
    paper = {}

    def validate(self, profile, options):
        if not self.run_columns(profile, options):
            raise DataNotFoundError(
                f"{self.name} needs CIFAR-100 under --data-root (digits stands in for CIFAR-10 only); "
                f"looked in {options.get('data_root') or '(no --data-root given)'}"
            )
        super().validate(profile, options)

    profile_rows = {p: tuple(FLIP_NETWORK_ROWS) for p in DR_PROFILES}
    base_row = None

    def cell_params(self, row, params, options):
        out = super().cell_params(row, params, options)
        out["model"] = "resnet32" if row.startswith("ResNet-32") else "wrn28_10"
        return out

    def plot(self, frame, out_path):
        from lfm_dr.figures import plot_network_bars

        plot_network_bars(frame, out_path, self.rows, self.columns, self.title)


class Figure7(FlipNetworks):
    """WRN-28-10 vs ResNet-32, base vs LFM, under CIFAR-10 flip noise."""

    name = "figure7"
    title = f"WRN-28-10 vs ResNet-32 under CIFAR-10 {NOISE_TITLES['flip']}"
    column_specs = noise_columns("flip", ("CIFAR-10",))


class Figure8(FlipNetworks):
    """WRN-28-10 vs ResNet-32, base vs LFM, under CIFAR-100 flip noise."""

    name = "figure8"
    title = f"WRN-28-10 vs ResNet-32 under CIFAR-100 {NOISE_TITLES['flip']}"
    column_specs = noise_columns("flip", ("CIFAR-100",))
    # without CIFAR-100 the cpu/smoke profiles draw the figure on digits (10 classes, not 100),
    # labelled as such: the network comparison of figure 7 again, as its own runs
    digits_for_cifar100 = True
