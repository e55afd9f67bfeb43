"""A LayerNorm written out (tf2onnx of Keras' LayerNormalization) over tokens that begin with a
class token: a learnt row (zeros at init) plus its position embedding, the same in every
sample. Its variance statistic is a constant whose predicted variance is a float round-off
(4e-40), not 0: the Sqrt's gamma law took a shape ``mu^2 / nu`` of 1e33, where ``Gamma(k +
1/2) / Gamma(k)`` loses every digit (mean 0 where sqrt(mu) holds), and the Reciprocal after it
read 1/0: 894x of the measured variance on a Keras ViT. Against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments

from ..oracle import monte_carlo, predict

B, T, D, P = 256, 16, 64, 48


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    f32 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    i64 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.int64), name)  # noqa: E731
    nodes = [
        helper.make_node("Tile", ["cls", "reps"], ["cls_b"]),
        helper.make_node("MatMul", ["x", "w"], ["patches"]),  # the patch embedding
        helper.make_node("Concat", ["cls_b", "patches"], ["tokens"], axis=1),
        helper.make_node("Add", ["tokens", "pos"], ["h"]),
        helper.make_node("GlobalAveragePool", ["h"], ["mean"]),
        helper.make_node("Sub", ["h", "mean"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["sq"]),
        helper.make_node("GlobalAveragePool", ["sq"], ["var"]),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["sd"]),
        helper.make_node("Reciprocal", ["sd"], ["inv"]),
        helper.make_node("Mul", ["d", "inv"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "cls_norm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, T, P])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "inv", "sd")],
        [f32("cls", np.zeros((1, 1, D))), i64("reps", [B, 1, 1]), f32("eps", 1e-6),
         f32("pos", rng.uniform(-0.05, 0.05, (T + 1, D))),
         f32("w", rng.uniform(-0.075, 0.075, (P, D)))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_layer_norm_over_a_constant_class_token():
    model = _model()
    x = Moments(np.zeros(()), np.ones(()))
    _, result = predict(model, {"x": x})
    values = monte_carlo(model, {"x": x})
    for name in ("sd", "inv", "y"):
        v = values[name].astype(np.float64)
        mean, var = result.moments[name].total()
        assert abs(var / v.var() - 1) < 0.1, (name, var, v.var())
        assert abs(mean - v.mean()) <= 0.1 * abs(v.mean()) + 1e-3, (name, mean, v.mean())
    # the class token's own row: its constant reciprocal standard deviation
    inv0 = result.moments["inv"].mean
    measured0 = values["inv"][:, 0].astype(np.float64).mean()
    assert abs(np.ravel(np.broadcast_to(inv0, (1, T + 1, 1)))[0] / measured0 - 1) < 0.02


def test_sqrt_of_a_statistic_constant_but_for_round_off():
    """Rows of 16 features, the first row fixed (variance 1e-40, a round-off) beside rows of
    N(0, 1) features whose variance statistic's Gaussian crosses 0 (the gamma law takes it);
    the statistics as tf2onnx writes them (GlobalAveragePool over the last axis of ``[N, T,
    D]``)."""
    rows, d = 4, 16
    f32 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["mean"]),
             helper.make_node("Sub", ["x", "mean"], ["c"]),
             helper.make_node("Mul", ["c", "c"], ["sq"]),
             helper.make_node("GlobalAveragePool", ["sq"], ["var"]),
             helper.make_node("Add", ["var", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Reciprocal", ["sd"], ["inv"])]
    graph = helper.make_graph(
        nodes, "rows", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, rows, d])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("sd", "inv")],
        [f32("eps", 1e-6)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    mean = np.zeros((1, rows, d))
    mean[0, 0] = np.linspace(-0.05, 0.05, d)
    var = np.ones((1, rows, 1))
    var[0, 0] = 1e-40
    x = Moments(mean, var)
    _, result = predict(model, {"x": x})
    values = monte_carlo(model, {"x": x})
    for name in ("sd", "inv"):
        v = values[name].astype(np.float64)
        predicted = np.broadcast_to(result.moments[name].mean, (1, rows, 1)).ravel()
        measured = v.mean(axis=0).ravel()
        # the fixed row exactly; the others within 10% (1.076x: the centring's Sub takes x and
        # its row mean as independent, docs/robustness.md)
        np.testing.assert_allclose(predicted[0], measured[0], rtol=0.02)
        np.testing.assert_allclose(predicted[1:], measured[1:], rtol=0.1)
        # the fixed row's variance: none
        assert np.ravel(np.broadcast_to(result.moments[name].var, (1, rows, 1)))[0] < 1e-12
