"""lfm-nas: Learning From Mistakes for differentiable architecture search (DARTS, P-DARTS)."""

from lfm_nas.darts import DartsArchitect
from lfm_nas.eval_net import NetworkCIFAR, NetworkImageNet, cutout
from lfm_nas.genotypes import Genotype, derive_genotype, format_genotype, load_genotype, save_genotype
from lfm_nas.operations import OPS, PRIMITIVES
from lfm_nas.problem import LFMArchitect, LFMNASProblem, build_lfm_search
from lfm_nas.spaces import (
    MixedOp, Network, PDartsNetwork, PSNetwork, darts_space, init_alphas, limit_skips, pdarts_space, pdarts_stages,
    prune_ops,
)

__version__ = "0.1.0"
__all__ = [
    "PRIMITIVES", "OPS", "MixedOp", "Network", "PDartsNetwork", "PSNetwork", "darts_space", "pdarts_space",
    "init_alphas", "pdarts_stages", "prune_ops", "limit_skips", "Genotype", "derive_genotype", "format_genotype",
    "save_genotype", "load_genotype", "NetworkCIFAR", "NetworkImageNet", "cutout", "LFMNASProblem", "LFMArchitect",
    "build_lfm_search", "DartsArchitect", "__version__",
]
