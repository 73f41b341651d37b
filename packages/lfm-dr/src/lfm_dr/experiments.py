"""The paper's data-reweighting tables (VI-IX) and figures (6-8) as registered experiments.

Profiles:
* ``paper``: the paper's protocol (DESIGN.md section 4) on CIFAR-10/100 or ANIMAL-10N from
  ``--data-root``; ResNet-32 / WRN-28-10 / VGG19-BN, 100 epochs, batch 100, lr 0.1 (/10 at 80
  and 90), an ImageNet-pretrained ResNet-18 encoder.
* ``cpu``: scikit-learn's embedded digits stand in for CIFAR-10 (CIFAR-100 columns run only when
  CIFAR-100 is under ``--data-root``), a narrow ResNet-32 on 16x16 images, a small random CNN
  encoder, a few epochs; minutes on 2 CPU cores.
* ``smoke``: the same code path in seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from lfm_core.data import load_dataset, make_splits
from lfm_core.errors import DataNotFoundError, UsageError
from lfm_core.experiments import Cell, Experiment, pv
from lfm_core.runtime import cpu_threads
from lfm_core.solver import ENGINES
from lfm_dr.methods.lfm import check_dr_engine
from lfm_dr.train import TrainConfig, device_of, train_dr

# table row -> registered method (rows absent here are cited from the paper, not run)
METHOD_OF_ROW = {
    "Base Model": "ce",
    "Focal Loss": "focal",
    "Class-Balance": "class_balanced",
    "Co-teaching": "coteaching",
    "Fine-tuning": "finetune",
    "L2RW": "l2rw",
    "GLC": "glc",
    "Meta-Net": "mwn",
    "LFM-DR": "lfm",
    "LFM-DR+ (ours)": "lfm_plus",  # beyond the paper (no paper number): lfm_dr/methods/lfm_plus.py
}
PLUS_ROW = "LFM-DR+ (ours)"
# the methods the LFM hypergradient engines apply to (the others ignore --engine)
LFM_METHODS = ("lfm", "lfm_plus")

PROFILE_SETTINGS: dict[str, dict[str, Any]] = {
    "smoke": dict(image_size=16, epochs=2, batch_size=50, meta_per_class=5, max_train=300,
                  model_kwargs={"width": 4, "blocks_per_stage": 1}, encoder="smallcnn", pretrained=False,
                  lr=0.05),
    "cpu": dict(image_size=16, epochs=12, batch_size=50, meta_per_class=10, max_train=None,
                model_kwargs={"width": 8, "blocks_per_stage": 1}, encoder="smallcnn", pretrained=False,
                lr=0.05),
    "paper": dict(image_size=32, epochs=100, batch_size=100, meta_per_class=None, max_train=None,
                  model_kwargs={}, encoder="resnet18", pretrained=True, lr=0.1),
}


def cifar_name(column: str) -> str:
    return "cifar100" if column.startswith("CIFAR-100") else "cifar10"


def has_cifar(root: Any, name: str) -> bool:
    if not root:
        return False
    folder = "cifar-100-python" if name == "cifar100" else "cifar-10-batches-py"
    return (Path(root) / folder).exists()


def paper_meta_per_class(num_classes: int, params: dict[str, Any]) -> int:
    """Clean meta examples per class in the paper's protocol: 10 for CIFAR-100 and for every
    long-tail column (Meta-Weight-Net's imbalance code: n_max 4990 / 490), 100 for CIFAR-10
    under label noise (1,000 images)."""
    long_tail = str(params.get("imbalance") or "none").lower() != "none"
    return 10 if num_classes > 10 or long_tail else 100


class DRExperiment(Experiment):
    package = "lfm-dr"
    model = "resnet32"
    # every implemented row fits the cpu profile's 20-minute budget on 2 cores (one thread each)
    cpu_rows: tuple[str, ...] = tuple(METHOD_OF_ROW)
    smoke_rows: tuple[str, ...] = ("Base Model", "LFM-DR")
    image_size: int | None = None  # digits' size on the cpu/smoke profiles (default: the profile's)

    def options(self) -> list[click.Option]:
        return [
            click.Option(["--methods"], default=None,
                         help="Comma-separated table rows to run (e.g. 'Base Model,LFM-DR'), or 'all'. "
                              "Default: a cpu/smoke subset, every implemented row for paper."),
            click.Option(["--engine"], type=click.Choice(ENGINES), default="exact", show_default=True,
                         help="LFM hypergradient engine (forward-difference: cheapest, O(eps) error)."),
            click.Option(["--encoder-weights"], type=click.Path(dir_okay=False), default=None,
                         help="Local ImageNet weights file for the ResNet-18 encoder (paper profile)."),
            click.Option(["--epochs"], type=click.IntRange(1), default=None, help="Override the profile's epochs."),
        ]

    # -- grid -------------------------------------------------------------------------------
    def run_rows(self, profile: str, options: dict[str, Any]) -> list[str]:
        implemented = [r for r in self.rows if r in METHOD_OF_ROW]
        text = options.get("methods")
        if text == "all":
            return implemented
        if text:
            rows = [r.strip() for r in text.split(",") if r.strip()]
            for r in rows:
                if r not in implemented:
                    raise UsageError(f"unknown or cited-only row {r!r} for --methods. Valid choices: "
                                     f"{', '.join(implemented)}, all.")
            return rows
        if profile == "paper":
            return implemented
        return [r for r in (self.smoke_rows if profile == "smoke" else self.cpu_rows) if r in implemented]

    def run_columns(self, profile: str, options: dict[str, Any]) -> list[str]:
        raise NotImplementedError

    def column_params(self, column: str, profile: str, options: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def cells(self, profile, options):
        cells = []
        for column in self.run_columns(profile, options):
            params = self.column_params(column, profile, options)
            for row in self.run_rows(profile, options):
                cells.append(Cell(row, column, {**params, "method": METHOD_OF_ROW[row], "model": self.model,
                                                "engine": options.get("engine") or "exact"}))
        return cells

    def dataset_for(self, column: str, profile: str, options: dict[str, Any]) -> str:
        name = cifar_name(column)
        if profile == "paper":
            return name
        return name if has_cifar(options.get("data_root"), name) and name == "cifar100" else "digits"

    def validate(self, profile, options):
        if any(c.params["method"] in LFM_METHODS for c in self.cells(profile, options)):
            check_dr_engine(options.get("engine") or "exact")
        if profile == "paper":
            root = options.get("data_root")
            for column in self.run_columns(profile, options):
                name = self.dataset_for(column, profile, options)
                if name.startswith("cifar") and not has_cifar(root, name) and not options.get("download"):
                    where = root or "(no --data-root given)"
                    raise DataNotFoundError(
                        f"the paper profile needs {name.upper()} under --data-root; looked in {where}. "
                        "Point --data-root at a folder with cifar-10-batches-py / cifar-100-python, or add --download."
                    )

    def describe(self, profile, options):
        if profile == "paper":
            return "data: CIFAR from --data-root, the paper's protocol (ResNet-18 ImageNet encoder)."
        return ("data: scikit-learn digits (embedded, offline) stand in for CIFAR-10; CIFAR-100 columns run only "
                "when CIFAR-100 is under --data-root. For the paper's numbers: --profile paper --data-root DIR.")

    # -- one run ------------------------------------------------------------------------------
    def build_splits(self, params: dict[str, Any], profile: str, seed: int, ctx) -> Any:
        s = PROFILE_SETTINGS[profile]
        name = params["dataset"]
        kwargs: dict[str, Any] = {}
        if name == "digits":
            kwargs["image_size"] = self.image_size or s["image_size"]
        bundle = load_dataset(name, root=ctx.data_root, download=ctx.download, **kwargs)
        meta_per_class = s["meta_per_class"] or paper_meta_per_class(bundle.num_classes, params)
        return make_splits(
            bundle, meta_per_class=meta_per_class, seed=seed,
            noise=params.get("noise"), noise_rate=params.get("rate", 0.0),
            imbalance=params.get("imbalance"), imbalance_factor=params.get("factor", 1.0),
            max_train=s["max_train"],
        )

    def train_config(self, params: dict[str, Any], profile: str, ctx) -> TrainConfig:
        s = PROFILE_SETTINGS[profile]
        opts = ctx.config.get("options", {})
        augment = None
        if profile == "paper" and params["dataset"].startswith("cifar"):
            from lfm_core.data import cifar_train_transform

            augment = cifar_train_transform()
        model_kwargs = dict(s["model_kwargs"]) if self.model == "resnet32" else {}
        return TrainConfig(
            method=params["method"], model=params["model"], model_kwargs=model_kwargs,
            epochs=opts.get("epochs") or s["epochs"], batch_size=s["batch_size"], meta_batch_size=s["batch_size"],
            lr=s["lr"], device=ctx.device, augment=augment, mixed_precision=ctx.mixed_precision,
            # LFM-DR+ replaces the random cpu/smoke encoder by the label-free pixel features
            options={"encoder": "pixels" if params["method"] == "lfm_plus" and profile != "paper" else s["encoder"],
                     "pretrained": s["pretrained"],
                     "encoder_weights": opts.get("encoder_weights"), "engine": params.get("engine", "exact"),
                     "noise_rate": params.get("rate", 0.0)},
        )

    def run_cell(self, cell, profile, seed, ctx):
        splits = self.build_splits(cell.params, profile, seed, ctx)
        cfg = self.train_config(cell.params, profile, ctx)
        with cpu_threads(device_of(cfg), profile):
            metrics = train_dr(cfg, splits, seed, ctx)
        metrics["noise_actual"] = float(splits.info.get("actual_noise_rate", 0.0) or 0.0)
        return metrics


NOISE_RATES = (0.0, 0.2, 0.4)


T7_ROWS = ["Base Model", "Reed-Hard", "Self-paced", "Focal Loss", "Co-teaching", "D2L", "Fine-tuning",
           "MentorNet", "L2RW", "GLC", "Meta-Net", "LFM-DR", PLUS_ROW]
T7_COLS = [f"{d} {r}%" for d in ("CIFAR-10", "CIFAR-100") for r in (0, 20, 40)]


class NoiseTable(DRExperiment):
    noise_default = "flip"
    rows = T7_ROWS  # Tables VII and VIII share their rows and cited baselines
    cited_rows = ("Reed-Hard", "Self-paced", "D2L", "MentorNet")

    columns = [f"{d} {int(r * 100)}%" for d in ("CIFAR-10", "CIFAR-100") for r in NOISE_RATES]

    def options(self):
        return [
            click.Option(["--noise"], type=click.Choice(["flip", "uniform", "pair"]), default=self.noise_default,
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
            if not any(abs(rate - r) < 1e-9 for r in NOISE_RATES):
                raise UsageError(f"noise rate {rate:g} is not a column of this table. Valid choices: 0, 0.2, 0.4.")
            rates.append(rate)
        return tuple(rates)

    def run_columns(self, profile, options):
        wanted = {f"{int(round(r * 100))}%" for r in self.selected_rates(options)}
        cols = [c for c in self.columns if c.rsplit(" ", 1)[1] in wanted]
        if profile != "paper":
            cols = [c for c in cols if c.startswith("CIFAR-10 ") or has_cifar(options.get("data_root"), "cifar100")]
        if profile == "smoke":
            cols = [c for c in cols if c.endswith("40%")][:1]
        return cols

    def includes(self, record):
        """The report shows the table's own noise type (runs with --noise X stay in their run dirs)."""
        return (record.get("params") or {}).get("noise", self.noise_default) == self.noise_default

    def column_params(self, column, profile, options):
        rate = int(column.rsplit(" ", 1)[1].rstrip("%")) / 100
        return {"dataset": self.dataset_for(column, profile, options), "noise": options.get("noise") or
                self.noise_default, "rate": rate}


def _table(rows: list[str], columns: list[str], text: str) -> dict[tuple[str, str], Any]:
    values = {}
    for row, line in zip(rows, text.strip().splitlines()):
        for column, item in zip(columns, line.split()):
            values[(row, column)] = pv(item)
    return values


class Table7(NoiseTable):
    """ResNet-32 under flip noise (CIFAR-10/100, 0/20/40%)."""

    name = "table7"
    title = "Test accuracy (%) of ResNet-32 under flip noise"
    paper = _table(T7_ROWS, T7_COLS, """
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
    title = "Test accuracy (%) of WRN-28-10 under uniform noise"
    noise_default = "uniform"
    model = "wrn28_10"
    paper = _table(T7_ROWS, T7_COLS, """
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

    def train_config(self, params, profile, ctx):
        cfg = super().train_config(params, profile, ctx)
        if profile != "paper":  # a WRN small enough for CPU: depth 10, width 1
            cfg.model_kwargs = {"depth": 10, "widen_factor": 1}
        return cfg


T6_ROWS = ["Base Model", "Focal Loss", "Class-Balance", "L2RW", "Meta-Net", "LFM-DR", PLUS_ROW]
IFS = (200, 100, 50, 20, 10, 1)
T6_COLS = [f"{d} IF {f}" for d in ("CIFAR-10", "CIFAR-100") for f in IFS]


class Table6(DRExperiment):
    """ResNet-32 on long-tailed CIFAR-10/100 (imbalance factors 200 ... 1)."""

    name = "table6"
    title = "Test accuracy (%) of ResNet-32 on long-tailed CIFAR-10 and CIFAR-100"
    rows = T6_ROWS
    columns = T6_COLS
    paper = _table(T6_ROWS, T6_COLS, """
65.68 70.36 74.81 82.23 86.39 92.89 34.84 38.32 43.85 51.44 55.71 70.50
65.29 70.38 76.71 82.76 86.66 93.03 35.62 38.41 44.32 51.95 55.78 70.52
68.89 74.57 79.27 84.36 87.49 92.89 36.23 39.60 45.32 52.59 57.99 70.50
66.51 74.16 78.93 82.12 85.19 89.25 33.38 40.23 44.44 51.64 53.73 64.11
68.91 75.21 80.06 84.94 87.84 92.66 37.91 42.09 46.74 54.37 58.46 70.37
73.72 78.89 83.46 86.98 89.24 92.92 39.08 43.27 47.42 56.10 59.70 70.58
""")

    def run_columns(self, profile, options):
        cols = list(self.columns)
        if profile != "paper":
            # digits has ~170 examples per class: factors above 20 leave a class empty or nearly so
            cols = ["CIFAR-10 IF 20", "CIFAR-10 IF 10", "CIFAR-10 IF 1"]
        if profile == "smoke":
            cols = cols[:1]
        return cols

    def column_params(self, column, profile, options):
        factor = float(column.rsplit(" ", 1)[1])
        return {"dataset": self.dataset_for(column, profile, options), "imbalance": "longtail", "factor": factor}


class Table9(DRExperiment):
    """VGG19-BN on ANIMAL-10N (real label noise)."""

    name = "table9"
    title = "Classification accuracy (%) on the ANIMAL-10N test set"
    model = "vgg19_bn"
    rows = ["NCT", "PLC", "SELFIE", "CE Dropout", "Vgg19-BN", "LFM"]
    columns = ["ANIMAL-10N"]
    cited_rows = ("NCT", "PLC", "SELFIE", "CE Dropout")
    paper = {(r, "ANIMAL-10N"): pv(v) for r, v in
             zip(rows, ["84.1", "83.4", "81.8", "81.3", "79.4", "86.4"])}
    row_method = {"Vgg19-BN": "ce", "LFM": "lfm"}
    image_size = 32  # VGG's five poolings need at least 32x32

    def run_rows(self, profile, options):
        return ["Vgg19-BN", "LFM"]

    def run_columns(self, profile, options):
        return self.columns

    def dataset_for(self, column, profile, options):
        return "imagefolder" if profile == "paper" else "digits"

    def cells(self, profile, options):
        params = {"dataset": self.dataset_for("ANIMAL-10N", profile, options), "model": self.model,
                  "engine": options.get("engine") or "exact"}
        return [Cell(r, "ANIMAL-10N", {**params, "method": self.row_method[r]}) for r in self.run_rows(profile, options)]

    def validate(self, profile, options):
        check_dr_engine(options.get("engine") or "exact")
        if profile == "paper" and not options.get("data_root"):
            raise DataNotFoundError("table9's paper profile needs ANIMAL-10N: pass --data-root DIR holding "
                                    "training/ and testing/ (file names like 3_00012.jpg)")

    def describe(self, profile, options):
        if profile == "paper":
            return "data: ANIMAL-10N from --data-root (64x64, VGG19-BN)."
        return ("data: digits stand in for ANIMAL-10N (no real label noise: expect no gain); "
                "paper: --profile paper --data-root DIR.")

    def train_config(self, params, profile, ctx):
        cfg = super().train_config(params, profile, ctx)
        if profile != "paper":
            cfg.model_kwargs = {"width_mult": 0.125, "image_size": self.image_size}
        else:
            cfg.model_kwargs = {"image_size": 64}
        return cfg

    def build_splits(self, params, profile, seed, ctx):
        if params["dataset"] != "imagefolder":
            return super().build_splits(params, profile, seed, ctx)
        bundle = load_dataset("imagefolder", root=ctx.data_root, image_size=64)
        return make_splits(bundle, meta_per_class=100, seed=seed)


class Figure6(Table6):
    """Confusion matrices, long-tailed CIFAR-10 IF 200, base model vs LFM."""

    name = "figure6"
    kind = "figure"
    title = "Confusion matrices on long-tailed CIFAR-10 (IF 200): base model vs LFM"
    metric_label = "Test accuracy (%); the figure shows per-class recall"
    rows = ["Base Model", "LFM-DR"]
    columns = ["CIFAR-10 IF 200"]
    paper = {}
    cited_rows = ()
    # the paper's text: recall of the rarest class (class 9) rises from 14.4% to 47.3%

    def run_rows(self, profile, options):
        return list(self.rows)

    def run_columns(self, profile, options):
        return self.columns

    def column_params(self, column, profile, options):
        # digits cannot hold IF 200 (a class would be empty): IF 20 stands in on the cpu/smoke profiles
        factor = 200.0 if profile == "paper" else 20.0
        return {"dataset": self.dataset_for(column, profile, options), "imbalance": "longtail", "factor": factor}

    def plot(self, frame, out_path):
        from lfm_dr.figures import plot_confusions

        plot_confusions(frame, out_path, self.rows)


class FlipNetworks(NoiseTable):
    kind = "figure"
    rows = ["ResNet-32 Base Model", "ResNet-32 LFM-DR", "WRN-28-10 Base Model", "WRN-28-10 LFM-DR"]
    cited_rows = ()
    paper = {}
    dataset_prefix = "CIFAR-10"

    @property
    def columns(self):  # type: ignore[override]
        return [f"{self.dataset_prefix} {r}%" for r in (0, 20, 40)]

    def run_columns(self, profile, options):
        cols = list(self.columns)
        if self.dataset_prefix == "CIFAR-100" and profile != "paper" and not has_cifar(options.get("data_root"), "cifar100"):
            cols = []
        return cols[-1:] if profile == "smoke" else cols

    def validate(self, profile, options):
        if not self.run_columns(profile, options):
            raise DataNotFoundError(
                f"{self.name} needs CIFAR-100 under --data-root (digits stands in for CIFAR-10 only); "
                f"looked in {options.get('data_root') or '(no --data-root given)'}"
            )
        super().validate(profile, options)

    def cells(self, profile, options):
        cells = []
        for column in self.run_columns(profile, options):
            params = self.column_params(column, profile, options)
            for row in self.rows:
                net, _, method = row.partition(" ")
                model = "resnet32" if net == "ResNet-32" else "wrn28_10"
                cells.append(Cell(row, column, {**params, "model": model, "method": METHOD_OF_ROW[method],
                                                "engine": options.get("engine") or "exact"}))
        return cells

    def train_config(self, params, profile, ctx):
        cfg = super().train_config(params, profile, ctx)
        if params["model"] == "wrn28_10":
            cfg.model_kwargs = {} if profile == "paper" else {"depth": 10, "widen_factor": 1}
        else:
            cfg.model_kwargs = dict(PROFILE_SETTINGS[profile]["model_kwargs"])
        return cfg

    def plot(self, frame, out_path):
        from lfm_dr.figures import plot_network_bars

        plot_network_bars(frame, out_path, self.rows, self.columns, self.title)


class Figure7(FlipNetworks):
    """WRN-28-10 vs ResNet-32, base vs LFM, under CIFAR-10 flip noise."""

    name = "figure7"
    title = "WRN-28-10 vs ResNet-32 under CIFAR-10 flip noise"


class Figure8(FlipNetworks):
    """WRN-28-10 vs ResNet-32, base vs LFM, under CIFAR-100 flip noise."""

    name = "figure8"
    title = "WRN-28-10 vs ResNet-32 under CIFAR-100 flip noise"
    dataset_prefix = "CIFAR-100"
