"""onnxinit: analyze and rescale the initialization of any ONNX model.

Public API::

    import onnxinit
    graph = onnxinit.load("model.onnx", input_shapes={"x": (8, 3, 32, 32)})
    result = onnxinit.analyze("model.onnx", measure=True)
    rescaled = onnxinit.rescale("model.onnx", "autoinit", output="model.autoinit.onnx")
"""

from __future__ import annotations

from ._version import __version__
from .analysis import Analysis, analyze
from .errors import OnnxInitError
from .graph import ModelGraph, load
from .moments import Moments
from .rescale import RescaleResult, rescale
from .weights import MappingReport, export_weights, read_weights

__all__ = ["Analysis", "MappingReport", "ModelGraph", "Moments", "OnnxInitError",
           "RescaleResult", "__version__", "analyze", "export_weights", "load", "read_weights",
           "rescale"]
