"""A Keras Conv1D / SeparableConv1D through tf2onnx, then a LayerNorm over its channels.

tf2onnx writes a Conv1D as ``ExpandDims`` (Unsqueeze), a Transpose to NCHW, a 2-D Conv on
``[N, C, 1, T]``, a Squeeze of the unit axis and a Transpose back to ``[N, T, C]``
(SeparableConv1D: a depthwise and a pointwise Conv before the Squeeze). The channels of a
position are a dense layer of the window's taps, so the per-token mean over them reads the
kernel's column sums and the variance statistic the channels' squared correlations (64
channels of 48 taps: 1.8x the independent channels' variance). Both read 1.3x and 1.8x low
while the Squeeze hid the Conv (SeparableConv1D's variance statistic 0.5-0.75x, then, the
depthwise channels' unequal variances averaged). Against onnxruntime, three weight draws;
the variance statistic within 15%: the centring's share of the squared correlations (along
the ones vector) is not in the pooled pairs, 1.12x on one SeparableConv draw."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments

from ..oracle import monte_carlo, predict
from .test_tf2onnx_pairs import _tf_layer_norm

B, T, C, D, K = 512, 32, 16, 64, 3


def _model(seed: int, separable: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    f32 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    i64 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.int64), name)  # noqa: E731
    nodes = [helper.make_node("Pad", ["x", "pads"], ["xp"]),  # Keras' causal padding
             helper.make_node("Unsqueeze", ["xp", "one"], ["x4"]),
             helper.make_node("Transpose", ["x4"], ["xc"], perm=[0, 3, 1, 2])]
    if separable:
        inits = [f32("wd", rng.standard_normal((C, 1, 1, K)) / np.sqrt(K)),
                 f32("wp", rng.standard_normal((D, C, 1, 1)) / np.sqrt(C))]
        nodes += [helper.make_node("Conv", ["xc", "wd"], ["dw"], group=C),
                  helper.make_node("Conv", ["dw", "wp"], ["c"])]
    else:
        inits = [f32("w", rng.standard_normal((D, C, 1, K)) / np.sqrt(C * K))]
        nodes.append(helper.make_node("Conv", ["xc", "w"], ["c"]))
    nodes += [helper.make_node("Squeeze", ["c", "two"], ["c3"]),
              helper.make_node("Transpose", ["c3"], ["h"], perm=[0, 2, 1])]
    nodes += _tf_layer_norm("h", "n", beta=True, sub_form=False)
    graph = helper.make_graph(
        nodes, "conv1d_norm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, T, C])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
         for n in ("n_mean", "n_var", "n_y")],
        inits + [i64("pads", [0, K - 1, 0, 0, 0, 0]), i64("one", [1]), i64("two", [2]),
                 f32("eps", 1e-6), f32("gamma", np.ones(D)), f32("beta", np.zeros(D))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("separable", [False, True])
def test_layer_norm_statistics_over_a_conv1d_channels(separable):
    for seed in range(3):
        model = _model(seed, separable)
        x = Moments(np.zeros((1, 1, C)), np.ones((1, 1, C)))
        _, result = predict(model, {"x": x})
        values = monte_carlo(model, {"x": x}, seed=seed)
        for name, tolerance in (("n_mean", 0.1), ("n_var", 0.15), ("n_y", 0.1)):
            ratio = result.moments[name].total()[1] / float(np.var(values[name].astype(np.float64)))
            assert abs(ratio - 1) < tolerance, (seed, name, ratio)
