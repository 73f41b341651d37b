"""The suite's registries. Plug-ins register through the entry-point group named here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from lfm_core.registry import Registry

if TYPE_CHECKING:
    from lfm_core.experiments import Experiment

# factories: called with keyword options, they build the named thing
Factory = Callable[..., Any]

ENCODERS: Registry[Factory] = Registry("encoder", "lfm.encoders", ["lfm_core.encoders"])
MODELS: Registry[Factory] = Registry("model", "lfm.models")
SEARCH_SPACES: Registry[Factory] = Registry("search space", "lfm.search_spaces")
DATASETS: Registry[Factory] = Registry("data set", "lfm.datasets", ["lfm_core.data"])
NOISE: Registry[Factory] = Registry("noise type", "lfm.noise", ["lfm_core.noise"])
IMBALANCE: Registry[Factory] = Registry("imbalance type", "lfm.imbalance", ["lfm_core.imbalance"])
SIMILARITIES: Registry[Factory] = Registry("similarity", "lfm.similarities", ["lfm_core.weighting"])
METHODS: Registry[Factory] = Registry("method", "lfm.methods")  # lfm_dr's method classes
EXPERIMENTS: Registry[type[Experiment]] = Registry("experiment", "lfm.experiments")

ALL: dict[str, Registry[Any]] = {
    "encoders": ENCODERS,
    "models": MODELS,
    "search_spaces": SEARCH_SPACES,
    "datasets": DATASETS,
    "noise": NOISE,
    "imbalance": IMBALANCE,
    "similarities": SIMILARITIES,
    "methods": METHODS,
    "experiments": EXPERIMENTS,
}
