"""onnxinit: analyze and rescale the initialization of any ONNX model.

Public API::

    import onnxinit
    graph = onnxinit.load("model.onnx", input_shapes={"x": (8, 3, 32, 32)})
    result = onnxinit.analyze("model.onnx", measure=True)
    rescaled = onnxinit.rescale("model.onnx", "autoinit", output="model.autoinit.onnx")

The names below are imported on first use (PEP 562), so that ``import onnxinit`` and the
command line's ``--help`` and ``--version`` do not pay for numpy, onnx and onnxruntime.
"""

from __future__ import annotations

import sys
import types

from ._version import __version__ as __version__
from .lazy import lazy_exports

# public name -> the module defining it
_EXPORTS = {
    "Analysis": "analysis", "analyze": "analysis", "predict_gradients": "analysis",
    "OnnxInitError": "errors",
    "ModelGraph": "graph", "load": "graph",
    "Moments": "moments",
    "RescaleResult": "rescale", "rescale": "rescale",
    "MappingReport": "weights", "export_weights": "weights", "read_weights": "weights",
}

__all__ = ["Analysis", "MappingReport", "ModelGraph", "Moments", "OnnxInitError", "RescaleResult",
           "__version__", "analyze", "export_weights", "load", "predict_gradients", "read_weights",
           "rescale"]

# the modules that import the rules: their quadrature nodes computed on one BLAS thread
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__, {"analysis", "rescale"})


class _Package(types.ModuleType):
    """Keeps ``onnxinit.rescale`` the function when the submodule of the same name is imported
    (the import system sets the submodule as an attribute of its package; the eager imports this
    file used to make replaced it with the function right away)."""

    def __setattr__(self, name: str, value) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
