"""A tensor of no elements: Phi-3's rotary embedding rotates the first ``rotary_dim`` features
of each head and concatenates the rest, ``q[..., rotary_dim:]``, which is empty when the whole
head rotates. Its statistics are those of nothing (0; a Concat drops it), and it is not an
activation to report. Before, on Phi-3 (the slice of a head after a Transpose) the Slice rule
gave up, the empirical fallback measured a NaN variance and the analysis refused the model
(PredictionError); here the Slice rule answered and the empty tensor was listed among the
activations (its measured variance NaN)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments

from ..oracle import monte_carlo, predict

B, T, D = 64, 8, 16


def _partial_rotary() -> onnx.ModelProto:
    i64 = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    nodes = [
        helper.make_node("Slice", ["x", "zero", "rot", "last"], ["rotated_part"]),
        helper.make_node("Slice", ["x", "rot", "end", "last"], ["rest"]),  # empty
        helper.make_node("Neg", ["rotated_part"], ["rotated"]),
        helper.make_node("Concat", ["rotated", "rest"], ["y"], axis=-1),
        helper.make_node("Relu", ["y"], ["z"]),
    ]
    graph = helper.make_graph(
        nodes, "partial_rotary",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, T, D])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [B, T, D])],
        [i64("zero", [0]), i64("rot", [D]), i64("end", [np.iinfo(np.int64).max]),
         i64("last", [-1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def test_an_empty_slice_is_dropped_not_measured():
    model = _partial_rotary()
    x = Moments.scalar(0.5, 2.0)
    graph, result = predict(model, {"x": x})
    assert result.rules["rest"] == "empty"
    assert "rest" not in graph.float_activations()
    values = monte_carlo(model, {"x": x})
    predicted = result.moments["z"].total()
    measured = values["z"].astype(np.float64)
    np.testing.assert_allclose(predicted, (measured.mean(), measured.var()), rtol=0.05)
