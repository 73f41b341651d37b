"""lfm-core: the tri-level Learning-From-Mistakes solver and the shared machinery of the suite."""

from lfm_core.errors import LFMError, UsageError
from lfm_core.registry import Registry, UnknownNameError

__version__ = "0.1.0"
__all__ = ["LFMError", "UsageError", "Registry", "UnknownNameError", "load_results", "collect_results",
           "__version__"]


def __getattr__(name: str):
    # pandas is imported only when results are read
    if name in ("load_results", "collect_results"):
        from lfm_core import results

        return getattr(results, name)
    raise AttributeError(f"module 'lfm_core' has no attribute {name!r}")
