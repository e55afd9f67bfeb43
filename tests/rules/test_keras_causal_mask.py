"""Keras 3's ``MultiHeadAttention(use_causal_mask=True)`` as tf2onnx writes it: the mask is
``And(Expand(True, Shape(logits)), tril)``, cast to float, and the logits are selected as
``logits * mask + (-2.4e38) * (1 - mask)`` (SelectV2 lowered to Mul and Add). The additive
mask's rule broadcast the sum's mean (the triangle's grid, without the batch axis) with the
masked logits' variance (per sample: the Expand's shape has the batch): "operands could not
be broadcast" (an internal error in strict mode; the empirical fallback otherwise, where the
Softmax read 6.7x high on a Keras encoder). Against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments

from ..oracle import monte_carlo, predict

B, H, T, K = 512, 2, 16, 16


def _model() -> onnx.ModelProto:
    tril = np.tril(np.ones((T, T), bool))[None, None]
    nodes = [
        helper.make_node("MatMul", ["q", "kt"], ["logits"]),
        helper.make_node("Shape", ["logits"], ["shape"]),
        helper.make_node("Expand", ["true", "shape"], ["ones"]),
        helper.make_node("And", ["ones", "tril"], ["keep"]),
        helper.make_node("Cast", ["keep"], ["keep_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["keep_f", "logits"], ["kept"]),
        helper.make_node("Not", ["keep"], ["drop"]),
        helper.make_node("Cast", ["drop"], ["drop_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["big", "drop_f"], ["offset"]),
        helper.make_node("Add", ["kept", "offset"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in
              (("q", [B, H, T, K]), ("kt", [B, H, K, T]), ("v", [B, H, T, K]))]
    graph = helper.make_graph(
        nodes, "causal", inputs,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("p", "y")],
        [numpy_helper.from_array(np.array(True), "true"), numpy_helper.from_array(tril, "tril"),
         numpy_helper.from_array(np.array(-2.372671e38, np.float32), "big")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_keras_causal_mask_selected_by_products():
    model = _model()
    scale = 0.25
    moments = {"q": Moments(np.zeros(()), np.full((), scale)),
               "kt": Moments(np.zeros(()), np.full((), scale)),
               "v": Moments(np.zeros(()), np.ones(()))}
    _, result = predict(model, moments)
    values = monte_carlo(model, moments)
    for name in ("p", "y"):
        v = values[name].astype(np.float64)
        mean, var = result.moments[name].total()
        assert abs(var / v.var() - 1) < 0.1, (name, var, v.var())
    # the causal rows: row t spreads over t + 1 keys (per query row, against the measured)
    p = values["p"].astype(np.float64)
    predicted = np.broadcast_to(result.moments["p"].var, (1, 1, T, T))[0, 0]
    row_var = p.var(axis=(0, 1))
    np.testing.assert_allclose(predicted.sum(axis=-1), row_var.sum(axis=-1), rtol=0.15)
