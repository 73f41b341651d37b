"""``python -m lfm_core`` is ``lfm-bench``."""

from lfm_core.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
