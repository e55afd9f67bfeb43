"""Statistics over the channels of a Conv map at each position (Keras' ``LayerNormalization()``
on a channels-last map, which tf2onnx writes as ``ReduceMean`` over axis 1 of the NCHW Conv
output, ``(x - m)^2`` averaged the same way, ``1 / sqrt(v + eps)``).

- **Position classes** (:mod:`onnxinit.rules.channel_classes`): a zero-padded Conv's border
  positions have a smaller variance in every channel; the generic rule divided each channel's
  total variance (the spread of the position means included) by C, and dropped the classes,
  so ``1 / sqrt(v + eps)`` took one law for every position (a corner's is 1.8x the
  interior's mean). The statistic's law per class is its scaled chi-square.
- **The channels' own variances** (:mod:`onnxinit.rules.group_conv_variance`,
  ``read_by_channels``): the second Conv's per-channel variances, which such a statistic reads,
  are ``w_j^T Cov(patch) w_j``; its input, a Conv map normalised over every axis as Keras'
  ``LayerNormalization(axis=[1, 2, 3])`` writes it (gamma one value per element, so the
  per-sample scale is broadcast over the whole map), is correlated across channels and taps.
  On main the independent sum read 0.69-1.89x per channel (also after a ReLU instead).

Against onnxruntime on 1024 samples of 12x12 maps, two weight draws each."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.models import make_model
from tests.oracle import monte_carlo, predict

B, C_IN, C1, C2, S = 1024, 3, 16, 32, 12


def _model(seed: int, first: str):
    """Conv 3 -> 16, then ``first`` ("layernorm": over every axis, tf2onnx's folded form with a
    per-element gamma; "relu"), Conv 16 -> 32, ReLU, and the LayerNorm statistics over its
    channels: ``m``, ``v``, ``r = 1 / sqrt(v + eps)``."""
    rng = np.random.default_rng(seed)
    consts = {"w1": rng.standard_normal((C1, C_IN, 3, 3)) * np.sqrt(2 / (9 * (C_IN + C1))),
              "w2": rng.standard_normal((C2, C1, 3, 3)) * np.sqrt(2 / (9 * (C1 + C2))),
              "all": np.array([2, 3, 1]), "one": np.array([1]), "eps": np.array(1e-3),
              "gamma": np.ones((1, C1, S, S))}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h1"], pads=[1, 1, 1, 1])]
    if first == "layernorm":
        nodes += [helper.make_node("ReduceMean", ["h1", "all"], ["m1"], keepdims=1),
                  helper.make_node("Sub", ["h1", "m1"], ["d1"]),
                  helper.make_node("Mul", ["d1", "d1"], ["q1"]),
                  helper.make_node("ReduceMean", ["q1", "all"], ["v1"], keepdims=1),
                  helper.make_node("Add", ["v1", "eps"], ["ve1"]),
                  helper.make_node("Sqrt", ["ve1"], ["sd1"]),
                  helper.make_node("Reciprocal", ["sd1"], ["r1"]),
                  helper.make_node("Mul", ["r1", "gamma"], ["s1"]),
                  helper.make_node("Neg", ["m1"], ["nm1"]),
                  helper.make_node("Mul", ["h1", "s1"], ["a1"]),
                  helper.make_node("Mul", ["nm1", "s1"], ["b1"]),
                  helper.make_node("Add", ["a1", "b1"], ["n1"])]
    else:
        nodes.append(helper.make_node("Relu", ["h1"], ["n1"]))
    nodes += [helper.make_node("Conv", ["n1", "w2"], ["h2"], pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["h2"], ["y"]),
              helper.make_node("ReduceMean", ["y", "one"], ["m"], keepdims=1),
              helper.make_node("Sub", ["y", "m"], ["d"]),
              helper.make_node("Mul", ["d", "d"], ["q"]),
              helper.make_node("ReduceMean", ["q", "one"], ["v"], keepdims=1),
              helper.make_node("Add", ["v", "eps"], ["ve"]),
              helper.make_node("Sqrt", ["ve"], ["sd"]),
              helper.make_node("Reciprocal", ["sd"], ["r"])]
    return make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, C_IN, S, S])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("h2", "v", "r")],
        [numpy_helper.from_array(v.astype(np.int64 if v.dtype.kind == "i" else np.float32), n)
         for n, v in consts.items()], opset=18)


@pytest.mark.parametrize("first", ["layernorm", "relu"])
def test_channel_statistics_of_a_conv_map(first):
    """The second Conv's channels within 10% (main: 0.69-1.89x), the variance statistic within
    30% (main: 0.56-0.79x; now 0.73-0.98x) and its ``1 / sqrt(v + eps)`` within 2x (main:
    0.40-0.50x; now 0.55-0.67x: a border class's statistic varies more than its channels'
    correlation factor, taken from the whole map, says)."""
    for seed in range(2):
        model = _model(seed, first)
        x = Moments.scalar(0.0, 1.0)
        _, result = predict(model, {"x": x})
        values = monte_carlo(model, {"x": x}, seed=seed)
        measured = values["h2"].astype(np.float64).var(axis=(0, 2, 3))
        predicted = np.broadcast_to(result.moments["h2"].var, (1, C2, 1, 1)).reshape(-1)
        ratio = predicted / measured  # each channel's variance over the map
        assert np.all(np.abs(ratio - 1) < 0.1), (first, seed, np.round(ratio, 2))
        v, r = (result.moments[n].total()[1] / values[n].astype(np.float64).var()
                for n in ("v", "r"))
        assert abs(v - 1) < 0.3, (first, seed, v)
        assert 0.5 < r < 2.0, (first, seed, r)
