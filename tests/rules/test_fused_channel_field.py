"""The channels' covariance field (rules/channel_covariance.py) through a written-out HardSwish
(``x * Relu6(x + 3) / 6``) or SiLU (``x * Sigmoid(x)``): the Mul is an element-wise function of
one tensor (rules/fusion.py), not a gate, so the 1x1 conv after it weights the channels'
covariance, against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.models import make_model
from tests.oracle import monte_carlo, predict


def _activation(kind, x, y):
    if kind == "HardSwish":
        return [helper.make_node("HardSwish", [x], [y])]
    if kind == "SiLU":
        return [helper.make_node("Sigmoid", [x], [y + "_s"]),
                helper.make_node("Mul", [x, y + "_s"], [y])]
    return [helper.make_node("Add", [x, "three"], [y + "_3"]),  # HardSwish written out
            helper.make_node("Clip", [y + "_3", "zero", "six"], [y + "_6"]),
            helper.make_node("Mul", [y + "_6", "sixth"], [y + "_r"]),
            helper.make_node("Mul", [x, y + "_r"], [y])]


def _block(kind, shape=(2000, 128, 4, 4), width=32, seed=1):
    """1x1 Conv (C -> width) -> BatchNorm (batch statistics) -> activation -> 1x1 Conv back to
    C ("c2"): the narrow conv's outputs are correlated across channels (``W W^T / C``), and
    c2's per-channel variance ``w^T S w`` reads that covariance through the activation."""
    rng = np.random.default_rng(seed)
    c = shape[1]
    consts = {"w1": rng.standard_normal((width, c, 1, 1)) / np.sqrt(c),
              "w2": rng.standard_normal((c, width, 1, 1)) / np.sqrt(width),
              "g": np.ones(width), "b": np.zeros(width), "m": np.zeros(width),
              "v": np.ones(width), "three": np.array(3.0), "zero": np.array(0.0),
              "six": np.array(6.0), "sixth": np.array(1 / 6)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"]),
             helper.make_node("BatchNormalization", ["c1", "g", "b", "m", "v"],
                              ["u", "rm", "rv"], training_mode=1),
             *_activation(kind, "u", "h"),
             helper.make_node("Conv", ["h", "w2"], ["c2"])]
    return make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("c2", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v.astype(np.float32), n) for n, v in consts.items()])


def _per_channel(var, channels):
    var = np.asarray(var, dtype=np.float64)
    return var.reshape(-1, channels, int(var.size // channels) if var.ndim > 1 else 1).mean(
        axis=(0, 2)) if var.size > 1 else np.full(channels, float(var))


@pytest.mark.parametrize("kind", ["written HardSwish", "SiLU"])
def test_conv_after_a_written_out_activation_reads_the_channels_covariance(kind):
    # measured: per-channel variances of c2 against onnxruntime; with the Mul taken as a gate
    # (the field dropped, the channels independent) the written-out HardSwish's c2 read up to
    # 28% off per channel, the HardSwish node's 4%
    x = Moments.scalar(0.0, 1.0)
    model = _block(kind)
    _, result = predict(model, {"x": x})
    measured = monte_carlo(model, {"x": x})["c2"].astype(np.float64).var(axis=(0, 2, 3))
    predicted = _per_channel(result.moments["c2"].var, 128)
    assert np.abs(predicted / measured - 1).max() < 0.08
    if kind == "written HardSwish":
        _, node = predict(_block("HardSwish"), {"x": x})
        np.testing.assert_allclose(predicted, _per_channel(node.moments["c2"].var, 128),
                                   rtol=0.01)
