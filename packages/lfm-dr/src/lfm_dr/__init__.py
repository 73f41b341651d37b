"""lfm-dr: Learning-From-Mistakes data reweighting, its baselines and the paper's DR experiments."""

from lfm_dr.api import FitResult, fit

__all__ = ["fit", "FitResult"]
__version__ = "0.1.0"
