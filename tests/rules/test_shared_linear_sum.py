"""Sums of per-channel linear images of one tensor (rules/linear_share.py): the training form of
re-parameterisable blocks (MobileOne, FastViT's RepMixer) adds ``BN(r)``, ``BN(dw1x1(r))`` and
``BN(dw3x3(r))`` of one ReLU map r, and ``r + s (mixer(r) - norm(r))``. The operands share
terms exactly (a 1x1 depthwise conv through its BatchNorm is ``sign(w_c) BN(r)``), so the sum's
variance is not the operands' sum. Checked against onnxruntime runs of the same graph
(tests/oracle.py's Monte Carlo)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.models import make_model
from tests.oracle import monte_carlo, per_channel, predict

C = 8
OUTPUTS = ["s1", "s", "y", "d", "z", "zr"]


def _blocks():
    """r = ReLU(Conv3x3(x)); s1 = BN1(r) + BN2(dw1x1(r)); s = s1 + BN3(dw3x3(r)); y = ReLU(s);
    d = (BN5(dw3x3'(r)) + BN4(r)) - BN6(r); z = r + 0.5 d; zr = ReLU(z)."""
    rng = np.random.default_rng(5)
    consts = {"w0": rng.normal(0, np.sqrt(2 / (9 * C)), (C, C, 3, 3)),
              "d1": rng.normal(0, 1, (C, 1, 1, 1)), "d3": rng.normal(0, 1 / 3, (C, 1, 3, 3)),
              "e3": rng.normal(0, 1 / 3, (C, 1, 3, 3)), "half": np.array(0.5)}
    for k in "123456":
        consts.update({f"g{k}": np.ones(C), f"b{k}": np.zeros(C), f"m{k}": np.zeros(C),
                       f"v{k}": np.ones(C)})
    inits = [numpy_helper.from_array(np.asarray(a, np.float32), n) for n, a in consts.items()]

    def bn(i, o, k):
        return helper.make_node("BatchNormalization", [i, f"g{k}", f"b{k}", f"m{k}", f"v{k}"],
                                [o, f"rm{k}", f"rv{k}"], training_mode=1)

    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1] * 4),
             helper.make_node("Relu", ["c0"], ["r"]),
             bn("r", "n1", "1"), helper.make_node("Conv", ["r", "d1"], ["c1"], group=C),
             bn("c1", "n2", "2"),
             helper.make_node("Conv", ["r", "d3"], ["c3"], group=C, pads=[1] * 4),
             bn("c3", "n3", "3"),
             helper.make_node("Add", ["n1", "n2"], ["s1"]),
             helper.make_node("Add", ["s1", "n3"], ["s"]),
             helper.make_node("Relu", ["s"], ["y"]),
             bn("r", "n4", "4"),
             helper.make_node("Conv", ["r", "e3"], ["c5"], group=C, pads=[1] * 4),
             bn("c5", "n5", "5"),
             helper.make_node("Add", ["n5", "n4"], ["mx"]), bn("r", "n6", "6"),
             helper.make_node("Sub", ["mx", "n6"], ["d"]),
             helper.make_node("Mul", ["d", "half"], ["hd"]),
             helper.make_node("Add", ["r", "hd"], ["z"]),
             helper.make_node("Relu", ["z"], ["zr"])]
    return make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, C, 16, 16])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in OUTPUTS], inits,
        opset=17)


@pytest.fixture(scope="module")
def runs():
    model = _blocks()
    x = Moments(np.zeros(()), np.ones(()))
    _, result = predict(model, {"x": x})
    return result.moments, monte_carlo(model, {"x": x})


@pytest.mark.parametrize("name", ["s1", "s", "d", "z"])
def test_sum_of_shared_terms_per_channel(runs, name):
    # before: s1 0 or 4 per channel read 2 (1x1 depthwise = +-BN(r)); d (BN4 - BN6 cancel)
    # 2.99x; z 1.74x
    moments, measured = runs
    _, var = moments[name].values_along(1, C)
    _, got = per_channel(measured[name])
    np.testing.assert_allclose(var, got, rtol=0.05, atol=0.01 * got.max())


@pytest.mark.parametrize("name", ["y", "zr"])
def test_relu_after_the_sum_keeps_the_base_law(runs, name):
    # before: 1.16x and 1.22x (independent operands); the Gaussian of the right moments 0.72x,
    # 0.79x (the normalised ReLU map's skew lost)
    moments, measured = runs
    mean, var = moments[name].values_along(1, C)
    got_mean, got_var = per_channel(measured[name])
    assert abs(var.mean() / got_var.mean() - 1) < 0.08
    assert abs(mean.mean() / got_mean.mean() - 1) < 0.05
