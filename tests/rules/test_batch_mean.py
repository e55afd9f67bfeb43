"""A training-mode BatchNorm of an input that is already centred over the batch, far below its
eps, and the global mean after it (HF EfficientNet's blocks at 1x1 and 2x2 maps), against
onnxruntime over many batches of 8 (:mod:`onnxinit.rules.batch_mean`)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.models import make_model
from tests.oracle import monte_carlo, predict

C, BATCH, RUNS = 32, 8, 300


def _model(size: int, scale: float = 0.003):
    """x -> 3x3 Conv (pads 1) -> BN -> 1x1 Conv of weights 0.003 -> BN (eps 1e-3) -> GAP:
    the 1x1 Conv's output has, per channel, a batch mean of exactly 0 (a sum of centred
    channels) and a variance of about 1e-5, so the second BN's output is ``g^2 v / eps``."""
    rng = np.random.default_rng(11)
    ones, zeros = np.ones(C, np.float32), np.zeros(C, np.float32)
    gamma = rng.uniform(0.5, 1.5, C).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["h", "g", "b", "rm", "rv"], ["n1", "m1", "v1"],
                              training_mode=1),
             helper.make_node("Conv", ["n1", "w"], ["y"]),
             helper.make_node("BatchNormalization", ["y", "g2", "b", "rm", "rv"], ["z", "m2", "v2"],
                              epsilon=1e-3, training_mode=1),
             helper.make_node("GlobalAveragePool", ["z"], ["p"])]
    model = make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, C, size, size])],
        # the running outputs are graph outputs: onnxruntime otherwise runs the BatchNorms in
        # inference mode
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
         for n in ("y", "z", "p", "m1", "v1", "m2", "v2")],
        [numpy_helper.from_array(v, n) for n, v in
         {"g": ones, "g2": gamma, "b": zeros, "rm": zeros, "rv": ones,
          "w0": (rng.standard_normal((C, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32),
          "w": (scale * rng.standard_normal((C, C, 1, 1))).astype(np.float32)}.items()])
    return model


@pytest.mark.parametrize("size", [1, 2])
def test_batch_norm_of_a_centred_input_below_eps_and_its_global_mean(size):
    model = _model(size)
    x = Moments.scalar(0.0, 1.0)
    _, result = predict(model, {"x": x})
    runs = [monte_carlo(model, {"x": x}, seed=s) for s in range(RUNS)]
    for name in ("y", "z", "p"):
        values = np.concatenate([r[name].astype(np.float64) for r in runs])
        predicted = float(result.moments[name].total()[1])
        assert predicted == pytest.approx(values.var(), rel=0.04), name


def test_batch_norm_at_the_global_mean_of_a_normal_regime_1x1_map():
    """The same chain with the 1x1 Conv at unit gain (its output about 1, far above eps): the
    global mean of a 1x1 map is its element, which main read 0.875x (the batch centring
    counted twice)."""
    model = _model(1, scale=1 / np.sqrt(C))
    x = Moments.scalar(0.0, 1.0)
    _, result = predict(model, {"x": x})
    runs = [monte_carlo(model, {"x": x}, seed=s) for s in range(RUNS)]
    values = np.concatenate([r["p"].astype(np.float64) for r in runs])
    assert float(result.moments["p"].total()[1]) == pytest.approx(values.var(), rel=0.03)


def test_stride_2_depthwise_conv_of_a_padded_2x2_map_is_partly_centred():
    """BN -> a 3x3 depthwise Conv of stride 2 and pads 1 (2x2 -> 1x1: each channel's four
    taps weight the four positions unequally, so its output's batch mean is not 0) -> BN
    (eps 1e-3, far above the input): the second BN's batch mean removes a share between 0 and
    1/n (:mod:`onnxinit.rules.conv_centring`)."""
    rng = np.random.default_rng(12)
    ones, zeros = np.ones(C, np.float32), np.zeros(C, np.float32)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["h", "g", "b", "rm", "rv"],
                              ["n1", "m1", "v1"], training_mode=1),
             helper.make_node("Conv", ["n1", "w"], ["y"], group=C, strides=[2, 2],
                              pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["y", "g", "b", "rm", "rv"],
                              ["z", "m2", "v2"], epsilon=1e-3, training_mode=1)]
    model = make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, C, 2, 2])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
         for n in ("y", "z", "m1", "v1", "m2", "v2")],
        [numpy_helper.from_array(v, n) for n, v in
         {"g": ones, "b": zeros, "rm": zeros, "rv": ones,
          "w0": (rng.standard_normal((C, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32),
          "w": (0.003 * rng.standard_normal((C, 1, 3, 3))).astype(np.float32)}.items()])
    x = Moments.scalar(0.0, 1.0)
    _, result = predict(model, {"x": x})
    runs = [monte_carlo(model, {"x": x}, seed=s) for s in range(RUNS)]
    for name in ("y", "z"):
        values = np.concatenate([r[name].astype(np.float64) for r in runs])
        predicted = float(result.moments[name].total()[1])
        assert predicted == pytest.approx(values.var(), rel=0.03), name
