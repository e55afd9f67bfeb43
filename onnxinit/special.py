"""scipy.special's ufuncs (``ndtr``, ``erf``...) without importing the ``scipy.special`` package.

scipy 1.17's ``scipy/special/__init__.py`` builds an array-API compatibility layer that clones
numpy's namespace, importing numpy.f2py, numpy.ma and numpy.testing on the way: 0.3 s of CPU
against 0.04 s for the compiled ufuncs, which are all the rules use. This module imports
``scipy.special._ufuncs`` under a bare stand-in for its package and removes the stand-in
afterwards, so a later ``import scipy.special`` runs the real package and reuses the same ufunc
objects (the values are those of ``scipy.special.ndtr`` & co., bit for bit: the same
functions). Anything else (``logsumexp``) is taken from the real package on first use; when
the private module cannot be loaded that way, everything is.

    from onnxinit import special   # in place of: from scipy import special
"""

from __future__ import annotations

import importlib
import os
import sys
import types


_NAMES = ("betaincinv", "erf", "erfcx", "expit", "gammaincinv", "gammaln", "log_ndtr", "ndtr",
          "ndtri")


def _load() -> types.ModuleType:
    """scipy.special._ufuncs imported without running scipy.special's ``__init__``; the real
    package where that fails (or where it is imported already: nothing to save)."""
    if "scipy.special" not in sys.modules:
        import scipy

        stand_in = types.ModuleType("scipy.special")
        stand_in.__path__ = [os.path.join(os.path.dirname(scipy.__file__), "special")]
        stand_in.__package__ = "scipy.special"
        sys.modules["scipy.special"] = stand_in
        try:
            module = importlib.import_module("scipy.special._ufuncs")
            if all(hasattr(module, name) for name in _NAMES):
                return module
        except Exception:  # noqa: BLE001 - a layout this does not know: the real package
            pass
        finally:
            if sys.modules.get("scipy.special") is stand_in:
                del sys.modules["scipy.special"]
        for name in [m for m in sys.modules if m.startswith("scipy.special.")]:
            del sys.modules[name]  # half-imported under the stand-in
    return importlib.import_module("scipy.special")


_module = _load()
betaincinv, erf, erfcx, expit = _module.betaincinv, _module.erf, _module.erfcx, _module.expit
gammaincinv, gammaln, log_ndtr, ndtr, ndtri = (
    _module.gammaincinv, _module.gammaln, _module.log_ndtr, _module.ndtr, _module.ndtri)


def __getattr__(name: str):
    """Any other scipy.special name (``logsumexp``): from the real package, imported now."""
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(importlib.import_module("scipy.special"), name)


__all__ = ["betaincinv", "erf", "erfcx", "expit", "gammaincinv", "gammaln", "log_ndtr", "ndtr",
           "ndtri"]
