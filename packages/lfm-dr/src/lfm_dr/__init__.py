"""lfm-dr: Learning-From-Mistakes data reweighting, its baselines and the paper's DR experiments."""

from lfm_dr.api import FitResult, fit
from lfm_dr.label_issues import LabelIssues, find_label_issues

__all__ = ["fit", "FitResult", "find_label_issues", "LabelIssues"]
__version__ = "0.1.0"
