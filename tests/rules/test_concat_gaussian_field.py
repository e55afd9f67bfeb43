"""A channel Concat of ReLU branches keeps the spatial correlation of the Gaussians under the
ReLUs (``correlation.concat(..., gaussian=True)``), not only the values': a MaxPool after it
(SqueezeNet's fire modules, Inception's blocks) takes its maximum over taps correlated as the
Gaussians are, and a ReLU's values are less correlated than its input. Checked against
onnxruntime runs of the same graph (tests/oracle.py's Monte Carlo)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.models import make_model
from tests.oracle import monte_carlo, per_channel, predict

CHANNELS = 4


def _concat_max_pool(batch: int):
    """Two Conv 5x5 (positive weights: neighbours correlated ~0.8) with a negative bias ->
    ReLU each -> Concat on the channels -> MaxPool(3, stride 2) -> y."""
    rng = np.random.default_rng(3)
    inits, nodes, branches = [], [], []
    for b in range(2):
        w = rng.uniform(0.0, 1.0, (CHANNELS, CHANNELS, 5, 5))
        w /= np.sqrt((w**2).sum(axis=(1, 2, 3), keepdims=True) )
        bias = np.full(CHANNELS, -0.5)
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{b}"),
                  numpy_helper.from_array(bias.astype(np.float32), f"b{b}")]
        nodes += [helper.make_node("Conv", ["x", f"w{b}", f"b{b}"], [f"c{b}"], pads=[2] * 4),
                  helper.make_node("Relu", [f"c{b}"], [f"r{b}"])]
        branches.append(f"r{b}")
    nodes += [helper.make_node("Concat", branches, ["cat"], axis=1),
              helper.make_node("MaxPool", ["cat"], ["y"], kernel_shape=[3, 3], strides=[2, 2])]
    return make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, CHANNELS, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)


def test_max_pool_after_concat_reads_the_gaussians_correlation():
    # before: the Concat dropped the Gaussians' correlation and the max pool took the ReLU'd
    # values' (lower) for its taps, overpredicting each channel's mean and E[y^2]
    x = Moments(0.0, 1.0)
    model = _concat_max_pool(256)
    _, result = predict(model, {"x": x})
    mean, var = result.moments["y"].values_along(1, 2 * CHANNELS)
    got_mean, got_var = per_channel(monte_carlo(model, {"x": x})["y"])
    np.testing.assert_allclose(mean, got_mean, rtol=0.03)
    np.testing.assert_allclose(var + mean**2, got_var + got_mean**2, rtol=0.03)
