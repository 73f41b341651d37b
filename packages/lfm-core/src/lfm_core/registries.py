"""The suite's registries. Plug-ins register through the entry-point group named here."""

from lfm_core.registry import Registry

ENCODERS = Registry("encoder", "lfm.encoders", ["lfm_core.encoders"])
MODELS = Registry("model", "lfm.models")
SEARCH_SPACES = Registry("search space", "lfm.search_spaces")
DATASETS = Registry("data set", "lfm.datasets", ["lfm_core.data"])
NOISE = Registry("noise type", "lfm.noise", ["lfm_core.noise"])
IMBALANCE = Registry("imbalance type", "lfm.imbalance", ["lfm_core.imbalance"])
SIMILARITIES = Registry("similarity", "lfm.similarities", ["lfm_core.weighting"])
METHODS = Registry("method", "lfm.methods")
EXPERIMENTS = Registry("experiment", "lfm.experiments")

ALL = {
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
