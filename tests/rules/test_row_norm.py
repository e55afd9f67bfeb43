"""RMSNorm written out as ops: ``x * 1/sqrt(mean(x^2) + eps)`` (Llama, T5) and
``x / sqrt(mean(x^2) + eps)``. The product is not independent of its factor: over the row,
``sum_f y_f^2 = D s g(s)^2``. Taken as independent it read ``E[x^2] E[1/s]``: 1.035x on rows of
64 features (Llama's and T5's norm outputs, and here). Against onnxruntime, with
features of unequal variance (each keeps its share of the row's second moment)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments

from ..oracle import monte_carlo, predict

B, T, D = 256, 8, 64


def _rms_norm(divide: bool) -> onnx.ModelProto:
    f32 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    nodes = [
        helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Pow", ["xf", "two"], ["sq"]),
        helper.make_node("ReduceMean", ["sq", "last"], ["ms"], keepdims=1),
        helper.make_node("Add", ["ms", "eps"], ["ms_eps"]),
        helper.make_node("Sqrt", ["ms_eps"], ["rms"]),
    ]
    if divide:
        nodes.append(helper.make_node("Div", ["xf", "rms"], ["normed"]))
    else:
        nodes += [helper.make_node("Div", ["one", "rms"], ["inv"]),
                  helper.make_node("Mul", ["xf", "inv"], ["normed"])]
    nodes.append(helper.make_node("Mul", ["gamma", "normed"], ["y"]))
    graph = helper.make_graph(
        nodes, "rms_norm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, T, D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [B, T, D]),
         helper.make_tensor_value_info("normed", TensorProto.FLOAT, [B, T, D])],
        [f32("two", 2.0), f32("eps", 1e-6), f32("one", 1.0),
         f32("gamma", np.linspace(0.5, 1.5, D)),
         numpy_helper.from_array(np.array([-1], np.int64), "last")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def _check(divide: bool):
    model = _rms_norm(divide)
    x = Moments(np.linspace(-0.3, 0.3, D).reshape(1, 1, D),
                np.linspace(0.6, 1.5, D).reshape(1, 1, D) ** 2)
    _, result = predict(model, {"x": x})
    values = monte_carlo(model, {"x": x})
    for name in ("normed", "y"):
        v = values[name].astype(np.float64).reshape(-1, D)
        ratio = result.moments[name].total()[1] / v.var()
        assert abs(ratio - 1) < 0.02, (name, ratio)
        # per feature: its share of the row's second moment
        predicted = np.broadcast_to(result.moments[name].var, (1, 1, D)).ravel()
        np.testing.assert_allclose(predicted, v.var(axis=0), rtol=0.1)


def test_times_reciprocal_rms():
    _check(divide=False)


def test_divided_by_rms():
    _check(divide=True)


def test_layer_norm_of_rows_with_one_law():
    """``tf.nn.moments`` LayerNorm of a 2-D ``[B, D]`` input whose features share one law
    (tf2onnx of a ``tf.function`` MLP): the row's statistics are scalars, and the rule failed on
    them ("axis -1 is out of bounds", the fallback measured the product)."""
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[-1], keepdims=1),
             helper.make_node("Sub", ["x", "m"], ["d"]),
             helper.make_node("Mul", ["d", "d"], ["sq"]),
             helper.make_node("ReduceMean", ["sq"], ["v"], axes=[-1], keepdims=1),
             helper.make_node("Add", ["v", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Reciprocal", ["sd"], ["inv"]),
             helper.make_node("Mul", ["d", "inv"], ["y"])]
    graph = helper.make_graph(
        nodes, "layer_norm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B * T, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [B * T, 16])],
        [numpy_helper.from_array(np.asarray(1e-5, np.float32), "eps")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = Moments.scalar(0.0, 1.0)
    _, result = predict(model, {"x": x})
    assert result.rules["y"] == "binary"
    measured = monte_carlo(model, {"x": x})["y"].astype(np.float64).var()
    assert abs(result.moments["y"].total()[1] / measured - 1) < 0.02
