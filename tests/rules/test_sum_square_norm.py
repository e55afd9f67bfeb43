"""Rows scaled to unit length through their sum of squares, as TensorFlow writes it:
``tf.nn.l2_normalize`` is ``x * 1/sqrt(max(sum(x^2), eps))`` and Keras' UnitNormalization
``x * min(1/sqrt(sum(x^2)), 1/eps)`` (tf2onnx: Mul, ReduceSum, Max or Min, Sqrt, Reciprocal).
Before, the sum of squares was read as a Gaussian whose left tail reaches 0: the reciprocal
was measured by the empirical fallback (infinite on its near-zero draws), the product 1e11x
high, and ``check`` failed with a false ONNXINIT001. Against onnxruntime, rows over the last
axis of ``[B, D]`` (ReLU features: positive means) and over the channels of a map."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments

from ..oracle import monte_carlo, predict


def _model(shape, axis: int, form: str) -> onnx.ModelProto:
    f32 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Mul", ["r", "r"], ["sq"]),
             helper.make_node("ReduceSum", ["sq", "axis"], ["s"], keepdims=1)]
    if form == "max":  # tf.nn.l2_normalize
        nodes += [helper.make_node("Max", ["s", "eps"], ["sf"]),
                  helper.make_node("Sqrt", ["sf"], ["n"]),
                  helper.make_node("Reciprocal", ["n"], ["inv"])]
    else:  # keras.layers.UnitNormalization
        nodes += [helper.make_node("Sqrt", ["s"], ["n"]),
                  helper.make_node("Reciprocal", ["n"], ["i"]),
                  helper.make_node("Min", ["i", "cap"], ["inv"])]
    nodes.append(helper.make_node("Mul", ["r", "inv"], ["y"]))
    graph = helper.make_graph(
        nodes, "l2", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape)),
         helper.make_tensor_value_info("inv", TensorProto.FLOAT, None)],
        [f32("eps", 1e-12), f32("cap", 1e12),
         numpy_helper.from_array(np.array([axis], np.int64), "axis")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


@pytest.mark.parametrize("form", ["max", "min"])
@pytest.mark.parametrize("shape,axis", [((4096, 64), -1), ((256, 32, 6, 6), 1)])
def test_sum_of_squares_norm(form, shape, axis):
    model = _model(shape, axis, form)
    rank, d = len(shape), shape[axis]
    grid = [1] * rank
    grid[axis] = d
    x = Moments(np.linspace(-0.5, 0.5, d).reshape(grid), np.linspace(0.5, 2.0, d).reshape(grid))
    _, result = predict(model, {"x": x})
    values = monte_carlo(model, {"x": x})
    for name in ("y", "inv"):
        v = values[name].astype(np.float64)
        predicted = result.moments[name].total()
        assert abs(predicted[1] / v.var() - 1) < 0.1, (name, predicted, v.var())
        assert abs(predicted[0] - v.mean()) < 0.1 * abs(v.mean()), (name, predicted, v.mean())
    # per feature: its share of the row's second moment (a rarely positive ReLU channel among
    # 32 reads up to 0.8x: E[x_f^2 / Q] > E[x_f^2] / E[Q] where x_f barely moves Q; the row's
    # total is exact)
    y = np.moveaxis(values["y"].astype(np.float64), axis, -1).reshape(-1, d)
    per = np.moveaxis(np.broadcast_to(result.moments["y"].expand_rank(rank).var, grid), axis, -1)
    np.testing.assert_allclose(per.ravel(), y.var(axis=0), rtol=0.3)
