"""A residual branch initialised to zero (its last BatchNorm's scale 0: TResNet, timm's
``zero_init_last``): ``h + 0`` is h, law included (rules/zero_branch.py), so a ReLU after the
sum of a LeakyReLU stream reads a ReLU of the LeakyReLU's Gaussian. Checked against
onnxruntime runs of the same graph (tests/oracle.py's Monte Carlo)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.models import make_model
from tests.oracle import monte_carlo, per_channel, predict

CHANNELS = 8


def _zero_branch(op: str, swapped: bool):
    """h = LeakyReLU(BN(Conv(x))); b = BN0(Conv(h)) with scale 0; s = h (op) b (b (op) h when
    ``swapped``); y = ReLU(s)."""
    rng = np.random.default_rng(3)
    c = CHANNELS
    w1 = rng.normal(0.0, np.sqrt(2.0 / (9 * c)), (c, c, 3, 3))
    w2 = rng.normal(0.0, np.sqrt(2.0 / (9 * c)), (c, c, 3, 3))
    consts = {"w1": w1, "w2": w2}
    for name, scale in (("1", 1.0), ("2", 0.0)):  # each BatchNorm its own constants
        consts.update({f"g{name}": np.full(c, scale), f"b{name}": np.zeros(c),
                       f"m{name}": np.zeros(c), f"v{name}": np.ones(c)})
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in consts.items()]
    operands = ["b", "h"] if swapped else ["h", "b"]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "g1", "b1", "m1", "v1"],
                              ["n1", "rm1", "rv1"], training_mode=1),
             helper.make_node("LeakyRelu", ["n1"], ["h"], alpha=0.01),
             helper.make_node("Conv", ["h", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c2", "g2", "b2", "m2", "v2"],
                              ["b", "rm2", "rv2"], training_mode=1),
             helper.make_node(op, operands, ["s"]),
             helper.make_node("Relu", ["s"], ["y"])]
    return make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, c, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits, opset=17)


@pytest.mark.parametrize("op,swapped", [("Add", False), ("Add", True), ("Sub", False)])
def test_relu_after_a_zero_branch_sum_reads_the_streams_own_law(op, swapped):
    # before: the sum kept only its moments and the ReLU read 0.63x of the measured variance
    model = _zero_branch(op, swapped)
    x = Moments(np.zeros(()), np.ones(()))
    _, result = predict(model, {"x": x})
    mean, var = result.moments["y"].values_along(1, CHANNELS)
    got_mean, got_var = per_channel(monte_carlo(model, {"x": x})["y"])
    np.testing.assert_allclose(var, got_var, rtol=0.05)
    np.testing.assert_allclose(mean, got_mean, rtol=0.03)
