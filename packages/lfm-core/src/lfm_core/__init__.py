"""lfm-core: the tri-level Learning-From-Mistakes solver and the shared machinery of the suite."""

from lfm_core.errors import LFMError, UsageError
from lfm_core.registry import Registry, UnknownNameError

__version__ = "0.1.0"
__all__ = ["LFMError", "UsageError", "Registry", "UnknownNameError", "__version__"]
