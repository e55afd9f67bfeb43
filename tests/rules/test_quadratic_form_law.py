"""The law of a sum of squares over a Conv map's correlated channels (rules/quadratic_form_law.py)
for the inverse square root a normalisation takes, against onnxruntime: a 3x3 Conv of one
channel into 16 (rank 9), then Keras' UnitNormalization over the channels as tf2onnx writes it
(``x * min(1 / sqrt(sum x^2), 1e12)``) or an RMS norm (``1 / sqrt(mean x^2 + eps)``). The
gamma matched to the sum's mean and variance (its shape 2.8 where the sum has 9 degrees of
freedom) has too heavy a left tail: ``Var 1/sqrt(Q)`` read 1.4x."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit import analyze

from ..models import make_model

N, C = 2048, 16


def _graph(form: str):
    rng = np.random.default_rng(1)
    f32 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    consts = [f32("w", rng.uniform(-1, 1, (C, 1, 3, 3)) * np.sqrt(6 / (9 + 9 * C))),
              f32("big", 1e12), f32("eps", 1e-3),
              numpy_helper.from_array(np.array([1], np.int64), "axes")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3]),
             helper.make_node("Mul", ["y", "y"], ["y2"])]
    if form == "keras":
        nodes += [helper.make_node("ReduceSum", ["y2", "axes"], ["q"], keepdims=1),
                  helper.make_node("Sqrt", ["q"], ["root"]),
                  helper.make_node("Reciprocal", ["root"], ["inv"]),
                  helper.make_node("Min", ["inv", "big"], ["scale"])]
    else:
        nodes += [helper.make_node("ReduceMean", ["y2"], ["q"], axes=[1], keepdims=1),
                  helper.make_node("Add", ["q", "eps"], ["qe"]),
                  helper.make_node("Sqrt", ["qe"], ["root"]),
                  helper.make_node("Reciprocal", ["root"], ["scale"])]
    nodes.append(helper.make_node("Mul", ["y", "scale"], ["out"]))
    model = make_model(nodes,
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, 1, 8, 8])],
                       [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                       consts, opset=17)
    model.ir_version = 10
    return model


@pytest.mark.parametrize("form", ["keras", "rms"])
def test_inverse_root_of_a_channel_square_sum(form):
    found = {t.name: t for t in analyze(_graph(form), batch_size=N, measure=True).tensors}
    for name in ("root", "scale"):
        t = found[name]
        assert t.var == pytest.approx(t.measured_var, rel=0.06), name
        assert t.mean == pytest.approx(t.measured_mean, rel=0.02), name


def _relu_norm_graph(seed: int):
    """Conv 3 -> 16 (3x3, valid) on a 6x6 input, a 1x1 Conv 16 -> 32, ReLU, then a LayerNorm
    over the channels as tf2onnx writes Keras' ``LayerNormalization()`` on a ReLU Conv map
    (``v = mean_c (r - mean_c r)^2``, ``1 / sqrt(v + eps)``): 32 ReLU channels of rank 16."""
    rng = np.random.default_rng(seed)
    f32 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    consts = [f32("w1", rng.uniform(-1, 1, (16, 3, 3, 3)) * np.sqrt(6 / (9 * 19))),
              f32("w2", rng.uniform(-1, 1, (32, 16, 1, 1)) * np.sqrt(6 / 48)), f32("eps", 1e-3)]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], kernel_shape=[3, 3]),
             helper.make_node("Conv", ["h", "w2"], ["z"], kernel_shape=[1, 1]),
             helper.make_node("Relu", ["z"], ["r"]),
             helper.make_node("ReduceMean", ["r"], ["m"], axes=[1], keepdims=1),
             helper.make_node("Sub", ["r", "m"], ["d"]),
             helper.make_node("Mul", ["d", "d"], ["d2"]),
             helper.make_node("ReduceMean", ["d2"], ["v"], axes=[1], keepdims=1),
             helper.make_node("Add", ["v", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["root"]),
             helper.make_node("Reciprocal", ["root"], ["inv"])]
    model = make_model(nodes,
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, 3, 6, 6])],
                       [helper.make_tensor_value_info("inv", TensorProto.FLOAT, None)],
                       consts, opset=17)
    model.ir_version = 10
    return model


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_inverse_root_of_a_relu_channel_variance(seed):
    """The ReLU channels are drawn from the Conv's Gaussian channels with their field; main
    read the variance statistic 1.15-1.33x (its mean 1.05-1.09x), its square root 1.18-1.33x
    and the inverse root 1.46-1.85x."""
    found = {t.name: t for t in analyze(_relu_norm_graph(seed), batch_size=N,
                                        measure=True).tensors}
    for name in ("v", "root", "inv"):
        t = found[name]
        assert t.var == pytest.approx(t.measured_var, rel=0.06), name
        assert t.mean == pytest.approx(t.measured_mean, rel=0.02), name
