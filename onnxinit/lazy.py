"""Project modules imported on first use, for code paths that most commands never take.

``backward = lazy_module("onnxinit.backward")`` at the top of a module gives a handle whose
first attribute access imports ``onnxinit.backward``; ``analyze`` without ``--backward`` then
never pays for the autodiff and the gradient rules. The import happens by name, so
``tests/test_imports.py`` reads every ``lazy_module("...")`` call as an import edge: cycles
through a lazy module are still found.
"""

from __future__ import annotations

import importlib
import sys
import contextlib
from collections.abc import Callable, Mapping, Set
from types import ModuleType

from .allocator import blas_single_threaded


class LazyModule:
    """A module imported on the first attribute access (then a plain attribute lookup)."""

    __slots__ = ("_name", "_module")

    def __init__(self, name: str):
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attribute: str):
        module = self._module
        if module is None:
            module = self._module = importlib.import_module(self._name)
        return getattr(module, attribute)

    def __repr__(self) -> str:
        state = "imported" if self._module is not None else "not imported yet"
        return f"<lazy module {self._name!r} ({state})>"


def lazy_module(name: str) -> LazyModule:
    """A handle on the module ``name`` (absolute, dotted) that imports it on first use."""
    return LazyModule(name)


def lazy_exports(package: str, exports: Mapping[str, str], public: list[str],
                 one_blas_thread: Set[str] = frozenset()
                 ) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """PEP 562 ``__getattr__`` and ``__dir__`` for ``package`` whose public names (``exports``:
    name -> submodule) are imported on first use and then kept as module attributes. The
    submodules in ``one_blas_thread`` (those that import the rules, whose quadrature nodes are
    eigenvalue problems solved at import) are first imported with BLAS on one thread, as the
    command line imports its modules (:func:`onnxinit.allocator.blas_single_threaded`)."""

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        first = module in one_blas_thread and f"{package}.{module}" not in sys.modules
        with blas_single_threaded() if first else contextlib.nullcontext():
            value = getattr(importlib.import_module(f".{module}", package), name)
        vars(sys.modules[package])[name] = value
        return value

    def __dir__() -> list[str]:
        return public

    return __getattr__, __dir__

