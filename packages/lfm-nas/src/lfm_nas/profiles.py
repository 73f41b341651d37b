"""The NAS profiles: every setting of the architecture search and of the evaluation, per profile.

The settings are two frozen dataclasses whose field defaults are the paper's protocol, each
written once: :class:`SearchSettings` (the supernet search) and :class:`EvalSettings` (the
searched cell trained from scratch). A profile (:class:`NASProfile`) is the two with the fields
it changes, and the embedded data set it runs on. A run records them flat in its config
(:meth:`NASProfile.record`) and reads them back from there (``SearchSettings.of``); the search
and evaluation cache keys are all of their fields (:mod:`lfm_nas.cache`).

* ``paper``: the paper's protocol on CIFAR-10/100 from ``--data-root`` (25k/25k search split of the
  50k training images; DARTS supernet of 8 cells, C=16, 8 primitives, 50 epochs; P-DARTS 3 stages
  of 25 epochs, 5 -> 11 -> 17 cells, 8 -> 5 -> 3 operations, LFM from epoch 10 of each stage;
  evaluation network of 20 cells, C=36, 600 epochs, batch 96, cutout 16, auxiliary 0.4, drop path
  0.2; ImageNet: 14 cells, C=48, 250 epochs) with ImageNet-pretrained ResNet encoders.
* ``cpu``: an embedded stand-in for CIFAR (16x16; ``--standin``: ``photo_patches``, grey patches of
  ten scikit-image photos, the default, or scikit-learn's ``digits``), a 5-cell C=8 supernet with 5
  primitives, a few search epochs and a short evaluation; random-init encoders. Photo patches are
  the default because they separate architectures and digits do not: on digits random and searched
  cells all land at 1-3% test error, on photo patches random cells span about 31-43%
  (``benchmarks/results/nas_standin_spread.json``).
* ``smoke``: the same code path in seconds on digits (8x8 images, 3-cell C=4 supernet, 4 primitives).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping

from lfm_core.data import STANDINS
from lfm_core.errors import check_choice
from lfm_core.experiments import typed_set
from lfm_core.solver import ENGINES as SOLVER_ENGINES
from lfm_nas.operations import OPS

P4 = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3")
P5 = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")


class _Settings:
    @classmethod
    def of(cls, record: Mapping[str, Any]):
        """These settings out of a run's recorded (flat, JSON) settings; lists read back as tuples."""
        return cls(**{f.name: _untuple(record[f.name]) for f in fields(cls)})

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def _untuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class SearchSettings(_Settings):
    """The architecture search (DARTS / P-DARTS supernet); every field is in the search cache key."""

    image_size: int = 32  # side of a stand-in's images (search and evaluation); CIFAR is 32x32
    search_pool: int | None = None  # training examples split into search-train / search-val (None: all)
    batch_size: int = 64
    search_epochs: int = 50
    steps_per_epoch: int | None = None  # None: one pass over the search-train half
    C: int = 16
    layers: int = 8
    primitives: tuple[str, ...] | None = None  # None: all 8 DARTS primitives
    pdarts_layers: tuple[int, ...] = (5, 11, 17)
    pdarts_ops: tuple[int, ...] = (8, 5, 3)
    pdarts_epochs: int = 25  # per stage
    pdarts_lfm_start: int = 10  # first epoch of each stage with architecture / LFM updates
    pdarts_skip_dropout: tuple[float, ...] = (0.1, 0.4, 0.7)
    pretrained: bool = True  # ImageNet-pretrained LFM encoders


@dataclass(frozen=True)
class EvalSettings(_Settings):
    """The searched cell trained from scratch (CIFAR network, and the ImageNet network of the
    transfer columns); every field is in the evaluation cache key."""

    eval_C: int = 36
    eval_layers: int = 20
    eval_epochs: int = 600
    eval_batch: int = 96
    eval_lr: float = 0.025
    cutout: int = 16
    auxiliary: float = 0.4
    drop_path: float = 0.2
    imagenet_size: int = 224
    imagenet_C: int = 48
    imagenet_layers: int = 14
    imagenet_epochs: int = 250
    imagenet_batch: int = 128
    imagenet_lr: float = 0.1


@dataclass(frozen=True)
class NASProfile:
    """One profile: its data (an embedded stand-in, or None for the columns' CIFAR) and settings."""

    data: str | None
    search: SearchSettings
    evaluation: EvalSettings

    def settable(self) -> dict[str, Any]:
        """The ``--set`` keys with their values: every search and evaluation setting."""
        return {**asdict(self.search), **asdict(self.evaluation)}

    def record(self) -> dict[str, Any]:
        """The flat settings a run's config records (``config["settings"]["settings"]``)."""
        return {**self.settable(), "search_dataset": self.data}


PROFILES: dict[str, NASProfile] = {
    "smoke": NASProfile(
        "digits",
        SearchSettings(image_size=8, search_pool=64, batch_size=16, search_epochs=1, steps_per_epoch=2, C=4,
                       layers=3, primitives=P4, pdarts_layers=(3, 3, 4), pdarts_ops=(4, 3, 2), pdarts_epochs=1,
                       pdarts_lfm_start=0, pdarts_skip_dropout=(0.0, 0.1, 0.2), pretrained=False),
        EvalSettings(eval_C=4, eval_layers=3, eval_epochs=1, eval_batch=64, eval_lr=0.05, cutout=0, drop_path=0.0,
                     imagenet_size=16, imagenet_C=4, imagenet_layers=3, imagenet_epochs=1, imagenet_batch=64,
                     imagenet_lr=0.05),
    ),
    "cpu": NASProfile(
        "photo_patches",
        SearchSettings(image_size=16, batch_size=32, search_epochs=3, steps_per_epoch=8, C=8, layers=5,
                       primitives=P5, pdarts_layers=(3, 5, 6), pdarts_ops=(5, 3, 2), pdarts_epochs=2,
                       pdarts_lfm_start=1, pdarts_skip_dropout=(0.0, 0.2, 0.4), pretrained=False),
        EvalSettings(eval_C=8, eval_layers=6, eval_epochs=8, eval_batch=64, eval_lr=0.05, cutout=4, drop_path=0.1,
                     imagenet_size=32, imagenet_C=8, imagenet_layers=5, imagenet_epochs=8, imagenet_batch=64,
                     imagenet_lr=0.05),
    ),
    "paper": NASProfile(None, SearchSettings(), EvalSettings()),
}

ENGINES = ("auto", *SOLVER_ENGINES)


def imagenet_root(options: dict[str, Any]) -> Path | None:
    if options.get("imagenet_root"):
        return Path(options["imagenet_root"]).expanduser()
    if options.get("data_root"):
        return Path(options["data_root"]).expanduser() / "imagenet"
    return None


def set_values(options: dict[str, Any]) -> dict[str, Any]:
    """The ``--set`` values, checked against the two settings' field types and read as them
    (``primitives``: names of ``lfm_nas.operations.OPS``)."""
    return typed_set(options.get("set") or {}, (SearchSettings, EvalSettings), {"primitives": tuple(OPS)})


def settings(profile: str, options: dict[str, Any]) -> NASProfile:
    """A profile after the command line: its stand-in (``--standin``; the paper profile keeps its
    CIFAR), the epoch and batch-size overrides, then ``--set``."""
    p = PROFILES[profile]
    search, evaluation = p.search, p.evaluation
    if options.get("search_epochs"):
        epochs = int(options["search_epochs"])
        search = replace(search, search_epochs=epochs, pdarts_epochs=epochs,
                         pdarts_lfm_start=min(search.pdarts_lfm_start, epochs - 1))
    if options.get("eval_epochs"):
        evaluation = replace(evaluation, eval_epochs=int(options["eval_epochs"]),
                             imagenet_epochs=int(options["eval_epochs"]))
    if options.get("batch_size"):
        search = replace(search, batch_size=int(options["batch_size"]))
    given = set_values(options)
    search = replace(search, **{k: v for k, v in given.items() if k in SearchSettings.names()})
    evaluation = replace(evaluation, **{k: v for k, v in given.items() if k in EvalSettings.names()})
    standin = options.get("standin") and check_choice("--standin", options["standin"], STANDINS)
    data = p.data and (standin or p.data)
    return NASProfile(data, search, evaluation)
