"""Finite-difference oracle for backward rules: a one-op (or few-op) model whose float tensors
are all parameters, an MSE loss against fixed random targets, and central differences of the
float64 loss along coordinate or random directions."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxinit.autodiff import GradientProgram
from onnxinit.autodiff.reference_ops import corrected_ops

FD_STEP = 1e-6
TOLERANCE = 1e-6
FLOAT32_TOLERANCE = 1e-4
COORDINATE_LIMIT = 24  # tensors this small are checked entry by entry


def make_model(nodes, initializers: dict, output: str, opset: int = 18) -> onnx.ModelProto:
    """A model with no runtime inputs: every tensor in ``initializers`` is an initializer."""
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()]
    graph = helper.make_graph(nodes, "op", [],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _output_shape(model):
    return ReferenceEvaluator(model, new_ops=corrected_ops()).run(None, {})[0].shape


def _directions(shape, rng):
    size = int(np.prod(shape))
    if size <= COORDINATE_LIMIT:
        for i in range(size):
            d = np.zeros(size)
            d[i] = 1.0
            yield d.reshape(shape)
    else:
        for _ in range(3):
            yield rng.standard_normal(shape)


def check_gradients(nodes, initializers: dict, output: str = "y", opset: int = 18,
                    seed: int = 0, extra_inputs=None):
    """Assert that the float64 gradient graph matches central differences to ``TOLERANCE``
    (relative to |g| |d| per direction) and that the float32 graph on onnxruntime matches it
    to ``FLOAT32_TOLERANCE``; returns the float64 gradients."""
    model = make_model(nodes, initializers, output, opset)
    rng = np.random.default_rng(seed + 1000)  # unlike the seeds of the inputs
    targets = rng.standard_normal(_output_shape(model))
    program = GradientProgram(model, {}, loss="mse", dtype="float64")
    assert program.wrt, "the model has no float parameters"
    _, grads = program.gradients({}, targets)
    base = {name: program.parameters[name] for name in program.wrt}
    for name in program.wrt:
        for direction in _directions(base[name].shape, rng):
            step = FD_STEP * (1.0 + np.abs(base[name]).max())
            up = program.loss({}, targets, {name: base[name] + step * direction})
            down = program.loss({}, targets, {name: base[name] - step * direction})
            numeric = (up - down) / (2 * step)
            analytic = float(np.sum(grads[name] * direction))
            scale = max(np.linalg.norm(grads[name]) * np.linalg.norm(direction), 1e-12)
            assert abs(numeric - analytic) <= TOLERANCE * scale, (
                f"{name}: finite difference {numeric:.10g} vs gradient {analytic:.10g}")
    program32 = GradientProgram(model, {}, loss="mse", device="cpu")
    _, grads32 = program32.gradients({}, targets.astype(np.float32))
    for name in program.wrt:
        error = np.linalg.norm(grads32[name] - grads[name])
        assert error <= FLOAT32_TOLERANCE * max(np.linalg.norm(grads[name]), 1e-6), (
            f"{name}: float32 onnxruntime gradient differs from float64 by {error:.3g}")
    return grads


def randn(*shape, seed=0, low=None):
    """Standard normal float32 values; with ``low``, magnitudes are kept above ``low``."""
    values = np.random.default_rng(seed).standard_normal(shape)
    if low is not None:
        values = np.sign(values) * (np.abs(values) + low)
    return values.astype(np.float32)


def node(op_type, inputs, output="y", **attrs):
    return helper.make_node(op_type, inputs, [output], **attrs)
