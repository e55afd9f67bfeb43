"""tf2onnx's ``tf.nn.l2_normalize`` over a dense layer's ReLU features (Mul(h, h), ReduceSum
over the last axis, Max with eps, Sqrt, Reciprocal), against onnxruntime.

The 64 features of a 16 -> 64 dense layer span 16 dimensions: their sum of squares is a
weighted sum of few chi-squares, with a thinner left tail than the gamma :mod:`.chi_square`
matches to its mean and variance, and the inverse square root lives there (Keras
``lambda_ops``: the reciprocal 1.14x). :mod:`.quadratic_form_law` now draws the features from
their row field for the chain after a reduce over the last axis too."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit import analyze

from ..models import make_model

FEATURES, WIDTH, STEPS = 16, 64, 4


def _l2_normalize(seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w = rng.uniform(-1, 1, (FEATURES, WIDTH)) * np.sqrt(6 / (FEATURES + WIDTH))
    inits = [numpy_helper.from_array(w.astype(np.float32), "w"),
             numpy_helper.from_array(np.array([-1], np.int64), "last"),
             numpy_helper.from_array(np.array(1e-12, np.float32), "eps")]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Relu", ["h"], ["a"]),
        helper.make_node("Mul", ["a", "a"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "last"], ["s"], keepdims=1),
        helper.make_node("Max", ["s", "eps"], ["se"]),
        helper.make_node("Sqrt", ["se"], ["r"]),
        helper.make_node("Reciprocal", ["r"], ["inv"]),
        helper.make_node("Mul", ["a", "inv"], ["y"]),
    ]
    return make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, STEPS, FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits, opset=13)


def _measured(model: onnx.ModelProto, names, batches: int = 1000) -> dict:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                              for n in names)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    runs = [session.run(list(names), {"x": rng.normal(size=(8, STEPS, FEATURES)).astype(
        np.float32)}) for _ in range(batches)]
    return {n: float(np.var(np.concatenate([r[i] for r in runs]).astype(np.float64)))
            for i, n in enumerate(names)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_inverse_length_of_dense_relu_rows(seed):
    model = _l2_normalize(seed)
    names = ["s", "r", "inv"]
    measured = _measured(model, names)
    predicted = {t.name: t.var for t in analyze(model, batch_size=8).tensors}
    for name in names:  # main: the reciprocal 1.1-1.2x (the gamma's left tail)
        assert predicted[name] == pytest.approx(measured[name], rel=0.06), name
