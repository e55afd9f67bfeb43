"""A MaxPool of a ReLU map multiplied by a per-sample squeeze-excite gate (VoVNet-ESE's
``x * hard_sigmoid(fc(mean(x)))`` before each stage's ceil-mode pool): the gate factors out of
every window, ``max(x s) = s max(x)`` (rules/gated_max.py). Checked against onnxruntime runs of
the same graph (tests/oracle.py's Monte Carlo)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.models import make_model
from tests.oracle import monte_carlo, per_channel, predict

CHANNELS = 16


def _gated_pool(ceil_mode: int, batch: int):
    """Conv 3x3 -> BatchNorm (batch statistics) -> ReLU -> r; the gate
    ``s = HardSigmoid(Conv1x1(ReduceMean_HW(r)))``; ``MaxPool(r s, 3, stride 2)`` -> m;
    ``AveragePool(m, 3, stride 1, pad 1)`` -> a (reads m's spatial correlation)."""
    rng = np.random.default_rng(5)
    w = rng.normal(0.0, np.sqrt(2.0 / (9 * CHANNELS)), (CHANNELS, CHANNELS, 3, 3))
    wf = rng.normal(0.0, np.sqrt(1.0 / CHANNELS), (CHANNELS, CHANNELS, 1, 1))
    c = CHANNELS
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for a, n in
             [(w, "w"), (wf, "wf"), (np.ones(c), "g"), (np.zeros(c), "b"), (np.zeros(c), "rm"),
              (np.ones(c), "rv")]]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "rm", "rv"],
                              ["bn", "rm_out", "rv_out"], training_mode=1),
             helper.make_node("Relu", ["bn"], ["r"]),
             helper.make_node("ReduceMean", ["r"], ["p"], axes=[2, 3], keepdims=1),
             helper.make_node("Conv", ["p", "wf"], ["f"]),
             helper.make_node("HardSigmoid", ["f"], ["s"], alpha=1 / 6, beta=0.5),
             helper.make_node("Mul", ["r", "s"], ["rs"]),
             helper.make_node("MaxPool", ["rs"], ["m"], kernel_shape=[3, 3], strides=[2, 2],
                              ceil_mode=ceil_mode),
             helper.make_node("AveragePool", ["m"], ["a"], kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1])]
    return make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, c, 16, 16])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("m", "a")], inits,
        opset=17)


@pytest.mark.parametrize("ceil_mode", [0, 1])
def test_max_pool_of_a_gated_map_factors_the_gate_out(ceil_mode):
    # before: the product, drawn as a Gaussian of its moments, lost the ReLU under it and the
    # pool read 0.38x of the measured variance (ESE-VoVNet's stage pools 0.44-0.55x)
    batch = 256
    model = _gated_pool(ceil_mode, batch)
    x = Moments(np.zeros(()), np.ones(()))
    _, result = predict(model, {"x": x})
    measured = monte_carlo(model, {"x": x})
    for name in ("m", "a"):
        assert result.rules[name] not in ("empirical", "pass-through")
        mean, var = result.moments[name].values_along(1, CHANNELS)
        got_mean, got_var = per_channel(measured[name])
        np.testing.assert_allclose(var, got_var, rtol=0.10)
        np.testing.assert_allclose(mean, got_mean, rtol=0.04)
        total = result.moments[name].total()[1]
        assert abs(total / measured[name].var() - 1) < 0.05
