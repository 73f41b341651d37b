"""The paper's data-reweighting tables (VI-IX) and figures (6-8) as registered experiments.

Each table is one declarative spec (``lfm_dr.tables``): a class holding its rows (table row ->
method), its columns as structured parameters (``DRColumn``), stand-ins, seeds, the paper's
numbers and claims. What a run really does is resolved
into one config by ``resolve`` (every profile setting after overrides, the method's options with
their defaults) and ``run_cell`` reads only that config.

Profiles (``DR_PROFILES``, one frozen ``DRProfile`` each, data rather than code):
* ``paper``: the paper's protocol on CIFAR-10/100 or ANIMAL-10N from ``--data-root``: ResNet-32 /
  WRN-28-10 / VGG19-BN, 100 epochs, batch 100, lr 0.1 (/10 at 80 and 90), an ImageNet-pretrained
  ResNet-18 encoder; meta set 100 per class for CIFAR-10 noise, 10 per class for CIFAR-100 and
  every long-tailed set (as in Meta-Weight-Net).
* ``cpu``: scikit-learn's embedded digits stand in for CIFAR-10 (CIFAR-100 columns run only when
  CIFAR-100 is under ``--data-root``), a narrow ResNet on 16x16 images, a small random CNN
  encoder, 12 epochs; minutes on 2 CPU cores. ``--standin photo_patches`` runs the same on grey
  patches of ten natural photos that scikit-image ships (``lfm_core.data.photo_patches``).
* ``smoke``: the same code path in seconds.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import click
import torch

from lfm_core.data import STANDIN_TITLES, STANDINS, load_dataset, make_splits
from lfm_core.encoders import encoder_label
from lfm_core.errors import DataNotFoundError, check_choice
from lfm_core.experiments import Cell, Experiment, check_set, has_cifar, selected
from lfm_core.identity import file_digest
from lfm_core.registries import METHODS
from lfm_core.runtime import cpu_threads
from lfm_core.solver import ENGINES
from lfm_dr.methods.lfm import DEFAULTS as LFM_DEFAULTS
from lfm_dr.methods.lfm import LFMReweighting
from lfm_dr.methods.lfm_plus import AUTO_ENCODER, choose_encoder
from lfm_dr.train import TrainConfig, device_of, gather, train_dr

PLUS_ROW = "LFM-DR+ (ours)"  # beyond the paper (no paper number): lfm_dr/methods/lfm_plus.py
# the methods the LFM hypergradient engines apply to (the others ignore --engine, so their runs
# are shared between engines)
LFM_METHODS = ("lfm", "lfm_plus")
PAPER_MODELS = {"resnet32": "ResNet-32", "wrn28_10": "WRN-28-10", "vgg19_bn": "VGG19-BN"}


@dataclass(frozen=True)
class DRProfile:
    """Everything a profile sets, per model where the model matters; the defaults are the
    embedded stand-ins' (cpu and smoke), the paper profile sets its protocol."""

    epochs: int
    model_kwargs: dict[str, dict[str, Any]]  # model -> its constructor's arguments
    meta_per_class: int | None  # None: the paper's rule (``paper_meta_per_class``)
    data: str | None = "digits"  # the embedded stand-in (``--standin`` picks another); None: the column's own
    image_size: int = 16
    batch_size: int = 50
    max_train: int | None = None
    lr: float = 0.05
    encoder: str = "smallcnn"
    pretrained: bool = False
    augment: str | None = None  # "cifar": the paper's random crop and flip
    max_columns: int | None = None
    # per method, options beside the profile's encoder (LFM-DR+'s label-free pixel encoder)
    method_options: dict[str, dict[str, Any]] = field(default_factory=lambda: {"lfm_plus": {"encoder": "pixels"}})


def standin_models(resnet_width: int) -> dict[str, dict[str, Any]]:
    """The stand-in profiles' networks: ResNet-8 at ``resnet_width``, WRN-10-1, VGG19-BN at 1/8 width."""
    return {"resnet32": {"width": resnet_width, "blocks_per_stage": 1},
            "wrn28_10": {"depth": 10, "widen_factor": 1},
            "vgg19_bn": {"width_mult": 0.125}}


DR_PROFILES: dict[str, DRProfile] = {
    "smoke": DRProfile(epochs=2, meta_per_class=5, max_train=300, max_columns=1, model_kwargs=standin_models(4)),
    "cpu": DRProfile(epochs=12, meta_per_class=10, model_kwargs=standin_models(8)),
    "paper": DRProfile(data=None, image_size=32, epochs=100, batch_size=100, meta_per_class=None, lr=0.1,
                       encoder="resnet18", pretrained=True, augment="cifar",
                       # LFM-DR+ picks its encoder from the meta set: the pretrained ResNet-18 or pixels
                       method_options={"lfm_plus": {"encoder": "auto"}},
                       model_kwargs={"resnet32": {}, "wrn28_10": {}, "vgg19_bn": {}}),
}
PAPER_EPOCHS = DR_PROFILES["paper"].epochs


def standin_of(profile: str, options: dict[str, Any]) -> str | None:
    """The embedded data set a stand-in profile runs on (``--standin``, default the profile's), or
    None on the paper profile (its columns' own data)."""
    data = DR_PROFILES[profile].data
    return None if data is None else (options.get("standin") or data)


NOISE_TITLES = {"flip": "flip noise", "uniform": "uniform noise", "pair": "pair noise"}


@dataclass(frozen=True)
class DRColumn:
    """One column of a DR table as parameters: the paper's data set, its label noise (type and
    rate) or its long-tail imbalance factor, and the header the paper prints for it."""

    label: str
    data: str  # the paper's data set as printed: CIFAR-10, CIFAR-100, ANIMAL-10N
    noise: str | None = None
    rate: float = 0.0
    factor: float | None = None  # long-tail imbalance factor

    @property
    def cifar(self) -> str:
        """The CIFAR the column needs on disk (ANIMAL-10N columns stand in like CIFAR-10 ones)."""
        return "cifar100" if self.data == "CIFAR-100" else "cifar10"


def noise_column(data: str, rate: float, noise: str | None = None) -> DRColumn:
    """A label-noise column, headed as the paper heads it ("CIFAR-10 40%"; with ``noise`` named
    in the header: "CIFAR-10 flip 40%")."""
    words = [data] + ([noise] if noise else []) + [f"{round(rate * 100)}%"]
    return DRColumn(" ".join(words), data, noise, rate)


def long_tail_column(data: str, factor: float) -> DRColumn:
    return DRColumn(f"{data} IF {factor:g}", data, factor=float(factor))


# -- a run's settings -----------------------------------------------------------------------------
@dataclass(frozen=True)
class DataSettings:
    """The data a run trains and is tested on; ``SETTABLE`` fields take ``--set KEY=VALUE``."""

    SETTABLE: ClassVar[tuple[str, ...]] = ("meta_per_class", "max_train", "image_size")
    dataset: str
    meta_per_class: int
    max_train: int | None = None
    noise: str | None = None
    rate: float = 0.0
    imbalance: str | None = None
    factor: float = 1.0
    image_size: int | None = None  # the embedded stand-ins' size (recorded for them only)

    def record(self) -> dict[str, Any]:
        out = asdict(self)
        if self.image_size is None:
            del out["image_size"]
        return out


@dataclass(frozen=True)
class TrainSettings:
    """The optimisation of a run; the defaults are ``TrainConfig``'s (the paper's protocol)."""

    SETTABLE: ClassVar[tuple[str, ...]] = ("epochs", "batch_size", "meta_batch_size", "lr", "momentum", "weight_decay")
    epochs: int
    batch_size: int
    meta_batch_size: int
    lr: float
    momentum: float = TrainConfig.momentum
    weight_decay: float = TrainConfig.weight_decay
    milestones: tuple[float, ...] = TrainConfig.milestones  # fractions of the epochs where lr /= 10
    augment: str | None = None  # "cifar": the paper's random crop and flip
    eval_batch_size: int = TrainConfig.eval_batch_size


@dataclass(frozen=True)
class DRSettings:
    """Everything that can change a DR run's result; ``record()`` is the ``settings`` of its
    ``config.json`` and ``from_record`` reads them back, so what is recorded is what runs."""

    data: DataSettings
    train: TrainSettings
    model: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    method: str = "ce"
    method_options: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {"data": self.data.record(), "model": {"name": self.model, "kwargs": dict(self.model_kwargs)},
                "train": {**asdict(self.train), "milestones": list(self.train.milestones)},
                "method": {"name": self.method, "options": dict(self.method_options)}}

    @classmethod
    def from_record(cls, settings: dict[str, Any]) -> "DRSettings":
        train = dict(settings["train"])
        return cls(DataSettings(**settings["data"]),
                   TrainSettings(**{**train, "milestones": tuple(train["milestones"])}),
                   settings["model"]["name"], dict(settings["model"]["kwargs"]),
                   settings["method"]["name"], dict(settings["method"]["options"]))


def typed_value(key: str, value: Any, default: Any) -> Any:
    """A ``--set`` value as its setting's type: an integer where a float is expected becomes
    that float (``lr=1`` is ``lr=1.0``); anything else is kept (``check_set`` checks kinds)."""
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def method_options(method: str, given: dict[str, Any]) -> dict[str, Any]:
    """A method's options with its defaults filled in (``DEFAULTS`` of the method's class); of
    the profile's options only those the method takes (a third-party method that declares no
    DEFAULTS gets them all)."""
    defaults = getattr(METHODS.get(method), "DEFAULTS", None)
    if defaults is None:
        return dict(given)
    return {**defaults, **{k: v for k, v in given.items() if k in defaults}}


def model_label(name: str, kwargs: dict[str, Any]) -> str:
    paper = PAPER_MODELS.get(name, name)
    if not kwargs:
        return paper
    if name == "resnet32":
        depth = 6 * int(kwargs.get("blocks_per_stage", 5)) + 2
        return f"ResNet-{depth} width {kwargs.get('width', 16)} (paper: {paper} width 16)"
    if name == "wrn28_10":
        return f"WRN-{kwargs.get('depth', 28)}-{kwargs.get('widen_factor', 10)} (paper: {paper})"
    if name == "vgg19_bn" and kwargs.get("width_mult", 1.0) != 1.0:
        return f"VGG19-BN at {kwargs['width_mult']:g}x width (paper: {paper})"
    return paper


def paper_meta_per_class(num_classes: int, params: dict[str, Any]) -> int:
    """Clean meta examples per class in the paper's protocol: 10 for CIFAR-100 and for every
    long-tail column (Meta-Weight-Net's imbalance code: n_max 4990 / 490), 100 for CIFAR-10
    under label noise (1,000 images)."""
    long_tail = str(params.get("imbalance") or "none").lower() != "none"
    return 10 if num_classes > 10 or long_tail else 100


class DRExperiment(Experiment):
    """A DR table: rows run registered methods (``row_methods``; other rows are cited), columns
    are ``DRColumn`` parameters (``column_specs``), ``paper_noise`` the noise the paper ran."""

    package = "lfm-dr"
    model = "resnet32"
    base_row = "Base Model"
    supports_compile = True
    row_methods: dict[str, str] = {}  # table row -> registered method
    column_specs: tuple[DRColumn, ...] = ()
    # the rows each profile runs by default ("all": every implemented row)
    profile_rows: dict[str, tuple[str, ...] | str] = {"smoke": ("Base Model", "LFM-DR"), "cpu": "all", "paper": "all"}
    image_size: int | None = None  # digits' size on the cpu/smoke profiles (default: the profile's)

    @property
    def columns(self) -> list[str]:  # type: ignore[override]
        return [c.label for c in self.column_specs]

    def column_spec(self, column: str) -> DRColumn:
        return {c.label: c for c in self.column_specs}[check_choice(f"{self.name} column", column, self.columns)]

    def not_run_reason(self, column):
        if self.column_spec(column).cifar == "cifar100":
            return "needs CIFAR-100 under --data-root; the embedded stand-ins (digits, photo patches) cover CIFAR-10 only"
        if self.standin_columns and column not in self.standin_columns:
            return "only the paper profile runs it (needs CIFAR-10 under --data-root)"
        return ""

    def options(self) -> list[click.Option]:
        return [
            click.Option(["--methods"], default=None,
                         help="Comma-separated table rows to run (e.g. 'Base Model,LFM-DR'), or 'all'. "
                              "Default: a cpu/smoke subset, every implemented row for paper."),
            click.Option(["--engine"], type=click.Choice((*ENGINES, "auto")), default=LFM_DEFAULTS["engine"],
                         show_default=True,
                         help="LFM hypergradient engine (forward-difference: cheapest, O(eps) error; exact-reverse: "
                              "exact, from the real steps' graphs; auto: the faster exact one, timed on the first "
                              "step and reported as engine_used)."),
            click.Option(["--encoder-weights"], type=click.Path(dir_okay=False), default=None,
                         help="Local ImageNet weights file for the ResNet-18 encoder (paper profile)."),
            click.Option(["--epochs"], type=click.IntRange(1), default=None, help="Override the profile's epochs."),
            click.Option(["--standin"], type=click.Choice(STANDINS), default=None,
                         help="Embedded data set of the cpu/smoke profiles (default: digits); photo_patches: "
                              "natural-photo patches (needs scikit-image). The paper profile ignores it."),
        ]

    def overrides(self, cell, options):
        given = {k: options[k] for k in ("epochs",) if options.get(k) is not None}
        method = METHODS.get(cell.params["method"])
        own = set(getattr(method, "DEFAULTS", None) or getattr(method, "known_options", None) or ())
        own |= {*DataSettings.SETTABLE, *TrainSettings.SETTABLE}
        return {**given, **{k: v for k, v in self.set_values(options).items() if k in own}}

    @staticmethod
    def settable_common(s: DRProfile) -> dict[str, Any]:
        """The ``--set`` keys every DR method takes (training and data), with the profile's values."""
        profile = {"epochs": s.epochs, "batch_size": s.batch_size, "meta_batch_size": s.batch_size,
                   "lr": s.lr, "meta_per_class": s.meta_per_class, "max_train": s.max_train,
                   "image_size": s.image_size}
        defaults = {f.name: f.default for f in fields(TrainSettings)}
        return {key: profile[key] if key in profile else defaults[key]
                for key in (*TrainSettings.SETTABLE, *DataSettings.SETTABLE)}

    def settable(self, profile: str, options: dict[str, Any]) -> dict[str, Any]:
        """The ``--set`` keys of this run and their defaults: training and data settings, and
        the options of the methods its rows run."""
        known = self.settable_common(DR_PROFILES[profile])
        for row in self.run_rows(profile, options):
            method = METHODS.get(self.method_of(row))
            defaults = getattr(method, "DEFAULTS", None) or {k: None for k in getattr(method, "known_options", ())}
            for key, value in defaults.items():
                known.setdefault(key, value)
        return known

    def set_values(self, options: dict[str, Any]) -> dict[str, Any]:
        """``--set`` as each setting's type (see ``typed_value``)."""
        known = self.settable("smoke", {**options, "methods": "all"})
        return {k: typed_value(k, v, known.get(k)) for k, v in (options.get("set") or {}).items()}

    # -- grid -------------------------------------------------------------------------------
    def method_of(self, row: str) -> str:
        return self.row_methods[row]

    def run_rows(self, profile: str, options: dict[str, Any]) -> list[str]:
        implemented = [r for r in self.rows if r in self.row_methods]
        text = options.get("methods")
        if text == "all":
            return implemented
        if text:
            rows = [r.strip() for r in text.split(",") if r.strip()]
            for r in rows:
                check_choice("row for --methods (cited-only rows cannot run)", r, implemented + ["all"])
            return rows
        chosen = self.profile_rows[profile]
        return implemented if chosen == "all" else [r for r in chosen if r in implemented]

    # the columns a stand-in profile can fill (None: every column); a profile may cap their number
    standin_columns: tuple[str, ...] | None = None
    # whether digits also stand in for CIFAR-100 when it is not on disk (else those columns wait for it)
    digits_for_cifar100 = False
    smoke_column: str | None = None  # the one column the smoke profile runs (default: the last)

    def table_columns(self, profile: str, options: dict[str, Any]) -> list[str]:
        """The columns asked for (e.g. by --rates), before what the profile's data allows."""
        return list(self.columns)

    def run_columns(self, profile: str, options: dict[str, Any]) -> list[str]:
        s = DR_PROFILES[profile]
        cols = self.table_columns(profile, options)
        if s.data is not None:  # a stand-in profile: digits for CIFAR-10, CIFAR-100 only if on disk
            allowed = self.standin_columns or cols
            cols = [c for c in cols if c in allowed and (self.column_spec(c).cifar == "cifar10"
                                                         or self.digits_for_cifar100
                                                         or self.dataset_for(c, profile, options) == "cifar100")]
        if s.max_columns:
            pick = [c for c in cols if c == self.smoke_column] or cols[-1:]
            cols = pick[: s.max_columns]
        return cols

    def column_params(self, column: str, profile: str, options: dict[str, Any]) -> dict[str, Any]:
        """What a column's cells run on: its data set and its label noise or long tail."""
        spec = self.column_spec(column)
        params: dict[str, Any] = {"dataset": self.dataset_for(column, profile, options)}
        if spec.noise:
            params.update(noise=self.noise_type(spec, options), rate=spec.rate)
        if spec.factor is not None:
            params.update(imbalance="longtail", factor=self.imbalance_factor(spec, profile))
        return params

    def noise_type(self, spec: DRColumn, options: dict[str, Any]) -> str | None:
        """The label noise a noise column runs with (the paper's, unless an option says otherwise)."""
        return spec.noise

    def imbalance_factor(self, spec: DRColumn, profile: str) -> float:
        """The factor a long-tail column runs with on this profile (the paper's, unless a
        stand-in cannot hold it)."""
        assert spec.factor is not None
        return spec.factor

    def cell_params(self, row: str, params: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
        method = self.method_of(row)
        out = {**params, "method": method, "model": self.model}
        if method in LFM_METHODS:
            out["engine"] = options.get("engine") or LFM_DEFAULTS["engine"]
        return out

    def cells(self, profile, options):
        cells = []
        for column in self.run_columns(profile, options):
            params = self.column_params(column, profile, options)
            for row in self.run_rows(profile, options):
                cells.append(Cell(row, column, self.cell_params(row, params, options)))
        return cells

    def dataset_for(self, column: str, profile: str, options: dict[str, Any]) -> str:
        name = self.column_spec(column).cifar
        if DR_PROFILES[profile].data is None:
            return name
        return name if name == "cifar100" and has_cifar(options.get("data_root"), name) else standin_of(profile, options)

    def validate(self, profile, options):
        self.run_rows(profile, options)
        check_set(options.get("set") or {}, self.settable(profile, options))
        if any(c.params["method"] in LFM_METHODS for c in self.cells(profile, options)):
            LFMReweighting.check_options({**(options.get("set") or {}),
                                          "engine": options.get("engine") or LFM_DEFAULTS["engine"]})
        if DR_PROFILES[profile].data is None:
            root = options.get("data_root")
            cells = [c for c in self.cells(profile, options) if selected(c, options.get("only"))]
            for column in dict.fromkeys(c.column for c in cells):
                name = self.dataset_for(column, profile, options)
                if name.startswith("cifar") and not has_cifar(root, name) and not options.get("download"):
                    where = root or "(no --data-root given)"
                    raise DataNotFoundError(
                        f"the paper profile needs {name.upper()} under --data-root; looked in {where}. "
                        "Point --data-root at a folder with cifar-10-batches-py / cifar-100-python, or add --download."
                    )
        if options.get("encoder_weights") and not Path(options["encoder_weights"]).is_file():
            raise DataNotFoundError(f"--encoder-weights {options['encoder_weights']} is not a file")
        if DR_PROFILES[profile].data is None and not options.get("encoder_weights"):
            self.check_pretrained([c for c in self.cells(profile, options) if selected(c, options.get("only"))],
                                  profile, options)

    def check_pretrained(self, cells: list[Cell], profile: str, options: dict[str, Any]) -> None:
        """Before anything runs: the pretrained encoders of these cells are in the Hugging Face cache."""
        from lfm_core.encoders import PRETRAINED_TAG, cached_pretrained_file, hf_cache_dir

        for cell in cells:
            if cell.params["method"] not in LFM_METHODS:
                continue
            opts = self.resolve(cell, profile, options)["method"]["options"]
            enc = opts.get("encoder")
            if opts.get("pretrained") and str(enc).startswith("resnet") and \
                    cached_pretrained_file(f"{enc}.{PRETRAINED_TAG}") is None:
                raise DataNotFoundError(
                    f"{cell.row} uses an ImageNet-pretrained {enc} encoder: no {enc}.{PRETRAINED_TAG} weights in "
                    f"the Hugging Face cache {hf_cache_dir()}; pass --encoder-weights FILE (a {enc} state dict) "
                    "or copy that cache here (or set HF_HOME)")

    def describe(self, profile, options):
        if DR_PROFILES[profile].data is None:
            return "data: CIFAR from --data-root, the paper's protocol (ResNet-18 ImageNet encoder)."
        if standin_of(profile, options) == "photo_patches":
            return ("data: grey patches of ten scikit-image photos (embedded, offline) stand in for CIFAR-10; "
                    "CIFAR-100 columns run only when CIFAR-100 is under --data-root. For the paper's numbers: "
                    "--profile paper --data-root DIR.")
        return ("data: scikit-learn digits (embedded, offline) stand in for CIFAR-10; CIFAR-100 columns run only "
                "when CIFAR-100 is under --data-root. For the paper's numbers: --profile paper --data-root DIR.")

    # -- the resolved config ----------------------------------------------------------------
    def meta_per_class(self, params: dict[str, Any], profile: str) -> int:
        """The paper's (Meta-Weight-Net's) meta set: 10 per class for CIFAR-100 and for every
        long-tailed set, 100 per class for CIFAR-10 under label noise; profiles may fix it."""
        fixed = DR_PROFILES[profile].meta_per_class
        if fixed is not None:
            return fixed
        return paper_meta_per_class(100 if params["dataset"] == "cifar100" else 10, params)

    def resolve(self, cell, profile, options):
        return self.settings(cell, profile, options).record()

    def settings(self, cell: Cell, profile: str, options: dict[str, Any]) -> DRSettings:
        """This cell's settings: the profile's, then ``--epochs`` and ``--set``, then the method's
        options with their defaults."""
        s = DR_PROFILES[profile]
        params = cell.params
        standin = params["dataset"] in STANDINS
        data = DataSettings(params["dataset"], self.meta_per_class(params, profile), s.max_train, params.get("noise"),
                            params.get("rate", 0.0), params.get("imbalance"), params.get("factor", 1.0),
                            (self.image_size or s.image_size) if standin else None)
        train = TrainSettings(options.get("epochs") or s.epochs, s.batch_size, s.batch_size, s.lr,
                              augment=s.augment if params["dataset"].startswith("cifar") else None)
        given = {"encoder": s.encoder, "pretrained": s.pretrained, "noise_rate": params.get("rate", 0.0),
                 **s.method_options.get(params["method"], {})}  # e.g. LFM-DR+'s label-free pixel encoder
        if "engine" in params:
            given["engine"] = params["engine"]
        if options.get("encoder_weights"):
            given["encoder_weights"] = file_digest(options["encoder_weights"])
        method = METHODS.get(params["method"])
        known = set(getattr(method, "DEFAULTS", None) or getattr(method, "known_options", None) or ())
        for key, value in self.set_values(options).items():  # --set KEY=VALUE, checked by validate
            if key in TrainSettings.SETTABLE:
                train = replace(train, **{key: value})
            elif key in DataSettings.SETTABLE and (key != "image_size" or standin):
                data = replace(data, **{key: value})
            elif key in known:
                given[key] = value
        return DRSettings(data, train, params["model"], self.model_kwargs(params["model"], profile),
                          params["method"], method_options(params["method"], given))

    def model_kwargs(self, model: str, profile: str) -> dict[str, Any]:
        return copy.deepcopy(DR_PROFILES[profile].model_kwargs[model])

    def run_labels(self, config):
        st = config.get("settings") or {}
        data, model, train = st.get("data", {}), st.get("model", {}), st.get("train", {})
        labels = {}
        if data.get("dataset") in STANDINS:
            size = data.get("image_size")
            title = STANDIN_TITLES[data["dataset"]]
            labels["data"] = f"{title} {size}×{size} (stand-in for {self.paper_data(config['column'])})"
        elif data:
            labels["data"] = str(data.get("dataset"))
            if data.get("max_train"):  # a cap the paper's protocol does not have
                labels["data"] += f", {data['max_train']} training images (paper: all)"
            if "meta_per_class" in (config.get("overrides") or {}):
                labels["data"] += f", meta set {data['meta_per_class']} per class"
        spec = self.column_spec(config["column"])
        if spec.factor is not None and data.get("factor") not in (None, spec.factor):
            labels["data"] += f", IF {data['factor']:g} (paper: IF {spec.factor:g})"
        if spec.noise and data.get("noise") not in (None, spec.noise):
            labels["data"] += f", {NOISE_TITLES[data['noise']]} (paper: {NOISE_TITLES[spec.noise]})"
        if model:
            labels["model"] = model_label(model["name"], model.get("kwargs") or {})
        opts = (st.get("method") or {}).get("options") or {}
        if "encoder" in opts and st.get("method", {}).get("name") in LFM_METHODS:
            weights = opts.get("encoder_weights")
            if opts["encoder"] == AUTO_ENCODER:
                labels["encoder"] = (f"{opts['encoder']}, chosen per run from the meta set: pixels or "
                                     f"{DR_PROFILES[config['profile']].encoder}")
            else:
                labels["encoder"] = encoder_label(opts["encoder"], bool(opts.get("pretrained")),
                                                  weights if isinstance(weights, dict) else None)
        if train:
            epochs = train.get("epochs")
            labels["budget"] = f"{epochs} epochs" + ("" if epochs == PAPER_EPOCHS else f" (paper: {PAPER_EPOCHS})")
        return labels

    def paper_data(self, column: str) -> str:
        return self.column_spec(column).data

    # -- one run ------------------------------------------------------------------------------
    def build_splits(self, settings: DRSettings, seed: int, ctx) -> Any:
        data = settings.data
        kwargs: dict[str, Any] = {}
        if data.dataset in STANDINS:
            kwargs["image_size"] = data.image_size
        bundle = load_dataset(data.dataset, root=ctx.data_root, download=ctx.download, **kwargs)
        return make_splits(
            bundle, meta_per_class=data.meta_per_class, seed=seed, noise=data.noise, noise_rate=data.rate,
            imbalance=data.imbalance, imbalance_factor=data.factor, max_train=data.max_train,
        )

    def train_config(self, settings: DRSettings, ctx) -> TrainConfig:
        train = settings.train
        augment = None
        if train.augment == "cifar":
            from lfm_core.data import cifar_train_transform

            augment = cifar_train_transform()
        options = dict(settings.method_options)
        if isinstance(options.get("encoder_weights"), dict):  # the file's identity -> its path
            options["encoder_weights"] = options["encoder_weights"]["path"]
        return TrainConfig(
            method=settings.method, model=settings.model, model_kwargs=dict(settings.model_kwargs),
            epochs=train.epochs, batch_size=train.batch_size, meta_batch_size=train.meta_batch_size,
            lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay, milestones=train.milestones,
            eval_batch_size=train.eval_batch_size, device=ctx.device, augment=augment,
            mixed_precision=ctx.mixed_precision, compile=getattr(ctx, "compile", False), options=options,
        )

    def step_timer(self, config: dict[str, Any], device: str | None = None):
        """One training step of this run's method and network on synthetic images of its shapes
        and batch sizes, as a callable (``lfm-bench run EXP --plan`` times a few). The encoder is
        built without its pretrained weights: the same cost, and nothing to load."""
        import math
        from types import SimpleNamespace

        import torch

        from lfm_core.data import synthetic
        from lfm_dr.train import autocast, build_method, gather

        settings = DRSettings.from_record(config["settings"])
        if "pretrained" in settings.method_options:
            settings = replace(settings, method_options={**settings.method_options, "pretrained": False})
        data, train = settings.data, settings.train
        k = {"cifar100": 100}.get(data.dataset, 10)
        size = settings.model_kwargs.get("image_size") or data.image_size or 32
        meta = math.ceil(int(train.meta_batch_size) / k)  # a meta set of at least one meta batch
        per_class = meta + math.ceil(int(train.batch_size) / k)
        bundle = synthetic(num_classes=k, n_train=k * per_class, n_test=k, image_size=size)
        splits = make_splits(bundle, meta_per_class=meta, seed=0)
        runtime = config.get("runtime") or {}
        cfg = self.train_config(settings, SimpleNamespace(device=device, mixed_precision=runtime.get("mixed_precision", "no"),
                                                          compile=bool(runtime.get("compile"))))
        dev = device_of(cfg)
        method, stream, _ = build_method(cfg, splits, 0, dev)

        def step() -> None:
            x, y, idx = gather(splits.train, stream.next(), dev, cfg.augment)
            with autocast(cfg, dev):
                method.train_step(x, y, idx, 0)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        return step

    def run_cell(self, cell, profile, seed, ctx):
        settings = DRSettings.from_record(ctx.config["settings"])
        splits = self.build_splits(settings, seed, ctx)
        cfg = self.train_config(settings, ctx)
        chosen = auto_encoder(cfg, splits, profile, seed)
        with cpu_threads(device_of(cfg), profile):
            metrics = train_dr(cfg, splits, seed, ctx)
        metrics["noise_actual"] = float(splits.info.get("actual_noise_rate", 0.0) or 0.0)
        metrics.update(chosen)
        return metrics


def auto_encoder(cfg: TrainConfig, splits: Any, profile: str, seed: int) -> dict[str, Any]:
    """``encoder="auto"``: set ``cfg.options``' encoder to the better of the profile's encoder and
    ``pixels`` on the meta set (``lfm_plus.choose_encoder``; it reads ``splits.meta`` only, never
    the training or test labels). Returns what to record (the choice and each AUROC)."""
    if cfg.options.get("encoder") != AUTO_ENCODER:
        return {}
    s = DR_PROFILES[profile]
    candidates = [(s.encoder, bool(s.pretrained)), ("pixels", False)]
    x, y, _ = gather(splits.meta, torch.arange(len(splits.meta)), device_of(cfg))
    (name, pretrained), aurocs = choose_encoder(candidates, x, y, splits.num_classes, cfg.options.get("similarity", "dot"),
                                                seed, weights=cfg.options.get("encoder_weights"))
    cfg.options.update(encoder=name, pretrained=pretrained)
    return {"encoder_chosen": name, **{f"encoder_auroc_{k}": v for k, v in aurocs.items()}}
