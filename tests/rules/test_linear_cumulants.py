"""The skewness a ReLU's input inherits through a squeeze-excite gate's product and a 1x1 Conv
of another Conv (an eval-mode MobileNetV3 block's end and the next block's expansion, BatchNorm
folded: torch's dynamo exporter), predicted against onnxruntime runs of the same graph."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from onnxinit.rules.linear_cumulants import product_law
from tests.models import make_model
from tests.oracle import monte_carlo, predict

C, SIDE, N = 16, 8, 1000


def _weights(rng, c_out: int, c_in: int) -> np.ndarray:
    return (rng.standard_normal((c_out, c_in, 1, 1)) * np.sqrt(2.0 / c_in)).astype(np.float32)


def _model(gated: bool):
    """x -> Conv 1x1 -> ReLU -> [x SE gate] -> Conv 1x1 (C -> C, the projection) -> Conv 1x1 (C -> 2C, the
    expansion) -> ReLU (``y``); the gate ``HardSigmoid(Conv(ReLU(Conv(GlobalAveragePool))))``.
    The expansion's input is a Conv of a Conv: each output a sum of C skewed ReLU values."""
    rng = np.random.default_rng(5)
    w_in, w_proj, w_exp = _weights(rng, C, C), _weights(rng, C, C), _weights(rng, 2 * C, C)
    inits = [numpy_helper.from_array(w, name) for w, name in
             ((w_in, "w_in"), (w_proj, "w_proj"), (w_exp, "w_exp"))]
    nodes = [helper.make_node("Conv", ["x", "w_in"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"])]
    projected = "r"
    if gated:
        inits += [numpy_helper.from_array(_weights(rng, 4, C), "w_se1"),
                  numpy_helper.from_array(_weights(rng, C, 4), "w_se2")]
        nodes += [
            helper.make_node("GlobalAveragePool", ["r"], ["p"]),
            helper.make_node("Conv", ["p", "w_se1"], ["q"]),
            helper.make_node("Relu", ["q"], ["qr"]),
            helper.make_node("Conv", ["qr", "w_se2"], ["gz"]),
            helper.make_node("HardSigmoid", ["gz"], ["g"], alpha=1 / 6, beta=0.5),
            helper.make_node("Mul", ["g", "r"], ["m"]),
        ]
        projected = "m"
    nodes += [helper.make_node("Conv", [projected, "w_proj"], ["a"]),
              helper.make_node("Conv", ["a", "w_exp"], ["z"]),
              helper.make_node("Relu", ["z"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, C, SIDE, SIDE])
    out = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("z", "y")]
    model = make_model(nodes, [x], out, inits)
    model.ir_version = 10
    return model, {"x": Moments.scalar(0.5, 1.0)}


def _relu_output(gated: bool):
    """(predicted per-channel mean and variance of ``y``, measured ones, predicted and measured
    total variance)."""
    model, moments = _model(gated)
    _, result = predict(model, moments)
    values = monte_carlo(model, moments)
    z, y = (values[n].astype(np.float64) for n in ("z", "y"))
    # the expansion's output is a linear map of the ReLU: its moments are exact already
    np.testing.assert_allclose(result.moments["z"].total()[1], z.var(), rtol=0.01)
    got = result.moments["y"]
    mean, var = got.values_along(1, 2 * C)
    return mean, var, y.mean(axis=(0, 2, 3)), y.var(axis=(0, 2, 3)), got.total()[1], y.var()


def test_relu_of_a_conv_of_a_conv_reads_the_composed_skewness():
    # the Gaussian of z: total variance 0.982x, channel means 0.03 sd (median) off; the
    # composed kernel's skewness and kurtosis: 0.997x, 0.013 sd. Left: two channels whose
    # inputs are almost all below the kink (means 0.02-0.04 sd: 59x and 211x the variance
    # either way, the expansion's guard), the first a bounded sum of non-negative terms
    mean, var, m, v, total, measured = _relu_output(gated=False)
    np.testing.assert_allclose(total, measured, rtol=0.006)
    assert np.median(np.abs(mean - m) / np.sqrt(v)) < 0.02


def test_relu_after_a_gated_projection_reads_the_product_skewness():
    # the Gaussian: 0.988x; the gate's product and the composed kernel: 0.996x
    *_, total, measured = _relu_output(gated=True)
    np.testing.assert_allclose(total, measured, rtol=0.006)


def test_product_law_of_independent_factors_matches_sampling():
    """The raw moments of a product of independent factors multiply: the product's cumulants
    against a sample of a ReLU of N(0.3, 1) times N(0.5, 0.01)."""
    rng = np.random.default_rng(0)
    x = np.maximum(rng.normal(0.3, 1.0, 1_000_000), 0.0)
    g = rng.normal(0.5, 0.1, x.size)

    def law(a):
        d = a - a.mean()
        k2 = (d**2).mean()
        return a.mean(), k2, (d**3).mean(), (d**4).mean() - 3 * k2**2

    got = product_law(law(x), law(g))
    want = law(x * g)
    np.testing.assert_allclose(got, want, rtol=0.02)
