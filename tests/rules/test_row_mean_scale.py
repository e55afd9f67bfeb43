"""A LayerNorm written out as tf2onnx writes Keras' LayerNormalization over a map's channels:
``x * s - mean * s``, ``s = gamma / sqrt(var + eps)``, ``-mean * s`` a product of two statistics
of one row. Over a ReLU map's channels at one position the two move together (a row of larger
scale has the larger mean and the smaller ``s``): taken as independent, ``-mean * s`` read
4-5x high (Keras ``layernorm_axes``: 4.77x); the sum ``x * s - mean * s``, which is
``(x - mean) * s``, 1.20-1.31x high. Against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments

from ..oracle import monte_carlo, predict

B, C, H, W = 64, 32, 4, 4


def _layer_norm(reshape: bool, scaled: bool) -> onnx.ModelProto:
    f32 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    mean_for_sub = "mean_r" if reshape else "mean"
    nodes = [
        helper.make_node("Mul", ["x", "scale"], ["xs"]) if scaled
        else helper.make_node("Identity", ["x"], ["xs"]),
        helper.make_node("Relu", ["xs"], ["r"]),
        helper.make_node("ReduceMean", ["r"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Neg", ["mean"], ["neg"]),
        helper.make_node("Reshape", ["mean", "shape"], ["mean_r"]),
        helper.make_node("Sub", ["r", mean_for_sub], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["d2"]),
        helper.make_node("ReduceMean", ["d2"], ["var"], axes=[1], keepdims=1),
        helper.make_node("Add", ["var", "eps"], ["var_eps"]),
        helper.make_node("Sqrt", ["var_eps"], ["std"]),
        helper.make_node("Reciprocal", ["std"], ["rstd"]),
        helper.make_node("Mul", ["rstd", "gamma"], ["s"]),
        helper.make_node("Mul", ["r", "s"], ["xs_n"]),
        helper.make_node("Mul", ["neg", "s"], ["ms"]),
        helper.make_node("Add", ["xs_n", "ms"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, C, H, W])]
    if scaled:
        inputs.append(helper.make_tensor_value_info("scale", TensorProto.FLOAT, [B, 1, H, W]))
    graph = helper.make_graph(
        nodes, "layer_norm", inputs,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("ms", "y")],
        [f32("eps", 1e-3), f32("gamma", np.linspace(0.5, 1.5, C).reshape(1, C, 1, 1)),
         numpy_helper.from_array(np.array([B, 1, H, W], np.int64), "shape")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.mark.parametrize("reshape", [True, False])
def test_mean_times_reciprocal_std_of_a_relu_row(reshape):
    model = _layer_norm(reshape, scaled=False)
    x = {"x": Moments(np.linspace(-0.5, 0.5, C).reshape(C, 1, 1),
                      np.linspace(0.5, 2.0, C).reshape(C, 1, 1))}
    _, result = predict(model, x)
    values = monte_carlo(model, x)
    v = values["ms"].astype(np.float64).transpose(1, 0, 2, 3).reshape(C, -1)
    predicted = np.broadcast_to(result.moments["ms"].var, (1, C, 1, 1)).ravel()
    ratio = predicted / v.var(axis=1)
    # per channel (gamma's), over 1024 rows: sampling noise of a variance about 4.4%
    assert np.all(np.abs(ratio - 1) < 0.15), ratio
    total = result.moments["ms"].total()
    assert abs(total[0] / v.mean() - 1) < 0.05
    assert abs(total[1] / v.var() - 1) < 0.1, total[1] / v.var()
    _check_sum(result, values)


def test_rows_of_a_varying_scale():
    """Each position's channels scaled by one factor: ``m / sqrt(v)`` does not see it."""
    model = _layer_norm(True, scaled=True)
    x = {"x": Moments(np.linspace(-0.5, 0.5, C).reshape(C, 1, 1),
                      np.linspace(0.5, 2.0, C).reshape(C, 1, 1)),
         "scale": Moments(np.float64(1.0), np.float64(0.25))}
    _, result = predict(model, x)
    values = monte_carlo(model, x)
    v = values["ms"].astype(np.float64)
    total = result.moments["ms"].total()
    assert abs(total[1] / v.var() - 1) < 0.1, total[1] / v.var()
    _check_sum(result, values)


def _check_sum(result, values):
    """``x * s - mean * s = (x - mean) * s``: the LayerNorm's output, 1.20-1.31x as a sum of two
    correlated terms. The whole tensor only: per channel, its share of the row's centred
    second moment (:func:`onnxinit.rules.row_norm.row_normalised`) reads 0.47-1.13x here (a
    small feature's Jensen term of ``1/v`` is not its share)."""
    y = values["y"].astype(np.float64)
    assert abs(result.moments["y"].total()[1] / y.var() - 1) < 0.1
