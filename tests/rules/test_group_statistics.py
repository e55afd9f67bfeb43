"""A GroupNorm's statistics written out over a 3x3 Conv's map (3 -> 32 channels, 16x16, zero
padding 1, 8 groups of 4 channels), in the two forms exporters write:

- tf2onnx (Keras GroupNormalization): Transpose to channels-last, Reshape to
  ``[N, H, W, 8, 4]``, ``ReduceMean`` over ``[1, 2, 4]`` of x and of ``(x - mean)^2``;
- PyTorch (a hand-written GroupNorm, ``x.view(N, 8, -1)``): ``ReduceMean`` over axis 2.

Each group's mean reads its 4 channels at all 256 positions; those values correlate across
channels and neighbouring positions (the kernels' tap sums; the squared correlations for the
centred squares), so the statistics' variances are not the independent ``nu / K``: per group
0.1-3x it for the mean, about 2x for the mean square. On main (independent values) the
groups' mean variances were 0.4-2.4x of onnxruntime's and the mean squares' 0.45-0.55x; with the
Conv's field within 10% over the groups and 0.88-1.55x per group (the largest misses on groups
whose tap sums nearly cancel, a tenth of the others' variance: the zero-padded border's
positions, whose taps do not cancel, are scaled from the interior's field). Against the exact values (the Conv of iid inputs as a matrix,
float64; seed 2) these predictions are 1.0-1.4x for the mean (1.3-1.4x on such groups) and
0.93-0.95x for the mean square. Per group against onnxruntime (2048 samples: each group's variance measured to
about 3%), three weight draws."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.models import make_model
from tests.oracle import monte_carlo, predict

B, C_IN, C, G, S = 2048, 3, 32, 8, 16


def _model(form: str, seed: int):
    rng = np.random.default_rng(seed)
    consts = {"w": rng.standard_normal((C, C_IN, 3, 3)) / np.sqrt(9 * C_IN)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1])]
    if form == "tf2onnx":
        consts["shape"] = np.array([B, S, S, G, C // G])
        nodes += [helper.make_node("Transpose", ["h"], ["t"], perm=[0, 2, 3, 1]),
                  helper.make_node("Reshape", ["t", "shape"], ["r"])]
        axes = [1, 2, 4]
    else:
        consts["shape"] = np.array([B, G, -1])
        nodes.append(helper.make_node("Reshape", ["h", "shape"], ["r"]))
        axes = [2]
    consts["axes"] = np.array(axes)
    nodes += [helper.make_node("ReduceMean", ["r", "axes"], ["m"], keepdims=1),
              helper.make_node("Sub", ["r", "m"], ["d"]),
              helper.make_node("Mul", ["d", "d"], ["d2"]),
              helper.make_node("ReduceMean", ["d2", "axes"], ["v"], keepdims=1)]
    return make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, C_IN, S, S])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("m", "v")],
        [numpy_helper.from_array(v.astype(np.int64 if n in ("shape", "axes") else np.float32), n)
         for n, v in consts.items()], opset=18)


def _check(form: str):
    for seed in range(3):
        model = _model(form, seed)
        x = Moments.scalar(0.0, 1.0)
        _, result = predict(model, {"x": x})
        values = monte_carlo(model, {"x": x}, seed=seed)
        for name in ("m", "v"):
            measured = values[name].astype(np.float64).reshape(B, G).var(axis=0)
            predicted = np.broadcast_to(result.moments[name].var, (1,) + values[name].shape[1:])
            ratio = predicted.reshape(G) / measured
            pooled = predicted.sum() / measured.sum()  # the groups' mean variance
            assert abs(pooled - 1) < 0.1, (form, seed, name, pooled, ratio)
            assert np.all((ratio > 0.7) & (ratio < 1.7)), (form, seed, name, ratio)


def test_group_statistics_of_a_conv_map_as_tf2onnx_writes_them():
    _check("tf2onnx")


def test_group_statistics_of_a_conv_map_as_a_pytorch_view_writes_them():
    _check("pytorch")
