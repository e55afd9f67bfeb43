"""Reverse-mode automatic differentiation of ONNX models into gradient graphs made of standard
ONNX ops (runs on any onnxruntime build, CPU or CUDA).

    loss, grads = onnxinit.autodiff.gradients("model.onnx", {"x": x}, labels=y)
    program = GradientProgram("model.onnx", {"x": x.shape})
    loss, grads = program.gradients({"x": x}, labels=y, params={"fc.weight": 2 * w})
"""

from __future__ import annotations

from ..parameters import float_parameters
from .loss import CrossEntropy, MeanSquaredError, ScalarOutput
from .lower import lower
from .program import GradientProgram, gradients, hvp
from .reverse import GradientGraph, build_gradient_graph

__all__ = [
    "CrossEntropy", "GradientGraph", "GradientProgram", "MeanSquaredError", "ScalarOutput",
    "build_gradient_graph", "float_parameters", "gradients", "hvp", "lower",
]
