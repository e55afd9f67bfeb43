"""Scores of an attention without projections, ``x @ x^T`` (Keras' ``Attention()([x, x])``,
tf2onnx: ``MatMul(x, Transpose(x, [0, 2, 1]))``). The diagonal is each row's squared norm,
which the MatMul rule read as a product of independent rows: the scores 0.15-0.25x of the
measured variance, the Softmax after them 0.4x. Rows of a dense layer from fewer inputs than
features (8 -> 32) correlate their features, which the diagonal's and the cells' variances
take (``tr C^2``). Against onnxruntime. Not modelled: the attention's output ``p @ x`` (0.6-0.7x),
whose weight on its own row grows with that row's norm (taken as independent of the values)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments

from ..oracle import monte_carlo, predict

B, T = 256, 16


def _model(k_in: int, d: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = rng.uniform(-1, 1, (k_in, d)) * np.sqrt(6 / (k_in + d))  # Glorot uniform
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Transpose", ["h"], ["ht"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["h", "ht"], ["scores"]),
             helper.make_node("Softmax", ["scores"], ["p"], axis=-1)]
    graph = helper.make_graph(
        nodes, "gram", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, T, k_in])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("scores", "p")],
        [numpy_helper.from_array(w.astype(np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("k_in,d,scale", [(32, 32, 0.1), (8, 32, 0.3)])
def test_self_similarity_scores(k_in, d, scale):
    model = _model(k_in, d)
    x = Moments(np.zeros(()), np.full((), scale))
    _, result = predict(model, {"x": x})
    values = monte_carlo(model, {"x": x})
    for name, tol in (("scores", 0.2), ("p", 0.25)):
        v = values[name].astype(np.float64)
        mean, var = result.moments[name].total()
        assert abs(np.log(var / v.var())) < np.log(1 + tol), (name, var, v.var())
