"""One small registry type, in the spirit of timm's model registry.

A registry maps names to factories. Names come from two places:
* ``@REGISTRY.register()`` decorators in modules the registry knows it must import
  (``builtin_modules``), imported lazily on first lookup;
* Python entry points of the registry's group (e.g. ``lfm.experiments``) declared by any
  installed package; they are listed without being imported, and loaded on first use.
So a package that is not installed contributes nothing, and a third party can add a
noise model or an experiment without touching this repository.
"""

from __future__ import annotations

import fnmatch
import importlib
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, Iterable, TypeVar

from lfm_core.errors import UsageError, check_choice

T = TypeVar("T")


class UnknownNameError(UsageError, KeyError):
    """An unknown name was asked of a registry; the message suggests close matches."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class Registry(Generic[T]):
    def __init__(self, kind: str, group: str | None = None, builtin_modules: Iterable[str] = ()):
        self.kind = kind
        self.group = group
        self._builtin_modules = tuple(builtin_modules)
        self._builtins_loaded = False
        self._items: dict[str, T] = {}
        self._entry_points: dict[str, Any] | None = None

    # -- registration ---------------------------------------------------------------
    def register(self, name: str | None = None, *, override: bool = False) -> Callable[[T], T]:
        """Decorator: ``@MODELS.register()`` or ``@MODELS.register("resnet32")``."""

        def decorator(obj: T) -> T:
            self.add(name or getattr(obj, "__name__"), obj, override=override)
            return obj

        return decorator

    def add(self, name: str, obj: T, *, override: bool = False) -> None:
        if not override and name in self._items and self._items[name] is not obj:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj

    # -- discovery ------------------------------------------------------------------
    def _load_builtins(self) -> None:
        if not self._builtins_loaded:
            self._builtins_loaded = True
            for module in self._builtin_modules:
                importlib.import_module(module)

    def _eps(self) -> dict[str, Any]:
        if self._entry_points is None:
            self._entry_points = {}
            if self.group:
                for ep in entry_points(group=self.group):
                    self._entry_points.setdefault(ep.name, ep)
        return self._entry_points

    def refresh(self) -> None:
        """Forget the cached entry points (after installing a plug-in in-process)."""
        self._entry_points = None

    def names(self) -> list[str]:
        self._load_builtins()
        return sorted(set(self._items) | set(self._eps()))

    def list(self, pattern: str = "*") -> list[str]:
        """Names matching a glob pattern, e.g. ``list('resnet*')``."""
        return [n for n in self.names() if fnmatch.fnmatchcase(n, pattern)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def __iter__(self):
        return iter(self.names())

    # -- lookup ---------------------------------------------------------------------
    def get(self, name: str) -> T:
        self._load_builtins()
        if name not in self._items:
            ep = self._eps().get(name)
            if ep is None:
                raise self.unknown(name)
            self._items[name] = ep.load()
        return self._items[name]

    def create(self, name: str, /, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)  # type: ignore[operator]

    def unknown(self, name: str) -> UnknownNameError:
        try:
            check_choice(self.kind, name, self.names())
        except UsageError as exc:
            return UnknownNameError(str(exc))
        raise AssertionError(f"{name!r} is registered")

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, group={self.group!r})"
