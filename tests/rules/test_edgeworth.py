"""The skewness of a depthwise Conv's output (few skewed inputs per output) and the element-wise
function after it, without BatchNorm between them (an eval-mode export folds it into the Conv):
predicted against onnxruntime runs of the same graph."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from onnxinit.rules import edgeworth
from onnxinit.rules.gaussian import chain_at_nodes
from tests.models import make_model
from tests.oracle import monte_carlo, predict

C, SIDE, N = 8, 12, 1500


def _depthwise_model(act: str, kernel: int, stride: int, scale: float = 1.0) -> tuple:
    """x -> Conv 1x1 (C -> C) -> HardSwish -> depthwise Conv (``kernel``, ``stride``,
    zero padding) -> ``act``: a MobileNetV3 block's first half with its BatchNorms folded (zero
    bias). The depthwise kernels are drawn with a positive or negative tilt per channel, as
    random kernels have: the channel mean (``sum W E[h]``) and the skewness share its sign."""
    rng = np.random.default_rng(3)
    w1 = (rng.standard_normal((C, C, 1, 1)) * np.sqrt(2.0 / C)).astype(np.float32)
    tilt = np.where(np.arange(C) % 2 == 0, 1.0, -1.0)[:, None, None, None]
    w2 = ((rng.standard_normal((C, 1, kernel, kernel)) * 0.3 + 0.1 * tilt) * scale).astype(np.float32)
    pad = kernel // 2
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"]),
        helper.make_node("HardSwish", ["a"], ["h"]),
        helper.make_node("Conv", ["h", "w2"], ["z"], group=C, pads=[pad] * 4,
                         strides=[stride, stride]),
    ]
    if act == "SiLU":  # the dynamo exporter's SiLU: x * Sigmoid(x)
        nodes += [helper.make_node("Sigmoid", ["z"], ["s"]),
                  helper.make_node("Mul", ["z", "s"], ["y"])]
    else:
        nodes.append(helper.make_node(act, ["z"], ["y"]))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, C, SIDE, SIDE])
    out = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("z", "y")]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
    return make_model(nodes, [x], out, inits), {"x": Moments.scalar(0.0, 4.0)}


@pytest.mark.parametrize("act,kernel,stride", [
    ("Relu", 3, 1), ("Relu", 3, 2), ("Relu", 5, 1), ("SiLU", 3, 1),
])  # fmt: skip
def test_function_of_a_depthwise_conv_of_skewed_inputs(act, kernel, stride):
    model, moments = _depthwise_model(act, kernel, stride)
    _, result = predict(model, moments)
    values = monte_carlo(model, moments)
    z, y = (values[n].astype(np.float64) for n in ("z", "y"))
    # the conv output's own moments are exact already (a linear map): the check is the function
    np.testing.assert_allclose(result.moments["z"].total()[1], z.var(), rtol=0.01)
    got = result.moments["y"]
    # the Gaussian of z: per channel 0.43-1.25x of the measured variance, 1.015-1.025x in
    # total, means 0.02-0.06 sd low (the skewness of 9 or 25 HardSwish values, its sign the
    # channel mean's); with the Edgeworth terms within 2.5% per channel (one 9.5%), 1.4% total
    np.testing.assert_allclose(got.total()[1], y.var(), rtol=0.015)
    np.testing.assert_allclose(got.values_along(1, C)[1], y.var(axis=(0, 2, 3)), rtol=0.1)
    np.testing.assert_allclose(got.values_along(1, C)[0], y.mean(axis=(0, 2, 3)),
                               atol=0.03 * float(np.sqrt(y.var())))


def test_a_vanished_signal_keeps_its_variance_through_a_gate():
    """A gate ``HardSigmoid(z) = 0.5 + 0.2 z`` of a depthwise Conv whose kernels have shrunk by
    1e-8 (an eval-mode export whose BatchNorms were folded at their initial statistics): the
    variance is 0.04 Var z, some 1e-17, beside a mean of 0.5. Oracle: the gate is linear
    there, and z is linear in the kernels, so Var y = 0.04 * 1e-16 * Var z_1, z_1 the same
    Conv at scale 1 run by onnxruntime. Summing the Edgeworth terms of ``g^2`` uncentred
    loses it to the cancellation of ``E[g]^2 = 0.25`` (up to 1e3-1e4x the true value)."""
    scale = 1e-8
    model, moments = _depthwise_model("HardSigmoid", 3, 1, scale)
    _, result = predict(model, moments)
    reference, _ = _depthwise_model("HardSigmoid", 3, 1)
    z1 = monte_carlo(reference, moments)["z"].astype(np.float64)
    want = 0.04 * scale**2 * z1.var(axis=(0, 2, 3))
    got = result.moments["y"].values_along(1, C)[1]
    np.testing.assert_allclose(got, want, rtol=0.05)


def test_node_sums_by_blocks_of_rows_equal_the_whole_products():
    """edgeworth._node_sums (a block of the first class axis at a time) gives the two products
    bit for bit as on the whole [nodes, cells] array (centred on the Gaussian's mean): a ReLU, a per-channel affine map before
    it, and a per-position constant (which does not broadcast on a block: the whole path)."""
    rng = np.random.default_rng(2)
    shape = (1, 16, 32, 32)
    mean = rng.normal(size=shape)
    var = rng.uniform(0.1, 3.0, size=shape)
    slope = rng.uniform(0.5, 2.0, size=(1, 16, 1, 1))
    grid = rng.uniform(0.5, 2.0, size=(1, 1, 32, 32))
    for fn in (lambda x: np.maximum(x, 0.0), lambda x: np.maximum(slope * x, 0.0),
               lambda x: np.maximum(grid * x, 0.0)):
        g = chain_at_nodes(fn, mean, np.sqrt(var), edgeworth._T)
        g -= edgeworth._W @ g  # centred on the Gaussian's mean
        whole = edgeworth._WEIGHTED_HE @ g, edgeworth._WEIGHTED_HE @ (g * g)
        for got, want in zip(edgeworth._node_sums(fn, mean, var), whole):
            np.testing.assert_array_equal(got, want)
