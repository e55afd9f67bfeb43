"""ReduceProd over independent terms (Keras' Lambda of ``tf.reduce_prod(1 + 0.1 tanh(h))`` over
32 positions went to the empirical fallback): ``E = prod mu_k``, ``E[y^2] = prod (nu_k +
mu_k^2)``. Against onnxruntime, with terms that differ along the reduced axis."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments

from ..oracle import monte_carlo, predict

B, T, D = 2048, 32, 8


def _model(opset: int) -> onnx.ModelProto:
    scale = np.linspace(0.5, 1.5, T, dtype=np.float32).reshape(T, 1)
    axes = {"axes": [1]} if opset < 18 else {}
    inputs = ["g"] + (["axes"] if opset >= 18 else [])
    nodes = [helper.make_node("Mul", ["x", "scale"], ["xs"]),  # terms differ along the axis
             helper.make_node("Tanh", ["xs"], ["t"]),
             helper.make_node("Mul", ["t", "tenth"], ["u"]),
             helper.make_node("Add", ["u", "one"], ["g"]),
             helper.make_node("ReduceProd", inputs, ["y"], keepdims=0, **axes)]
    graph = helper.make_graph(
        nodes, "prod", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, T, D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [B, D])],
        [numpy_helper.from_array(scale, "scale"),
         numpy_helper.from_array(np.array(0.1, np.float32), "tenth"),
         numpy_helper.from_array(np.array(1.0, np.float32), "one"),
         numpy_helper.from_array(np.array([1], np.int64), "axes")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


@pytest.mark.parametrize("opset", [13, 18])
def test_product_of_independent_terms(opset):
    model = _model(opset)
    x = Moments(np.float64(0.3), np.float64(1.0))
    graph, result = predict(model, {"x": x})
    assert not [f for f in result.fallbacks if f.op == "ReduceProd"]  # measured before
    y = monte_carlo(model, {"x": x})["y"].astype(np.float64)
    mean, var = result.moments["y"].total()
    assert abs(mean - y.mean()) < 0.05 * y.std(), (mean, y.mean())
    assert abs(var / y.var() - 1) < 0.1, (var, y.var())
