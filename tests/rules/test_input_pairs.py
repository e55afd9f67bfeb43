"""A depthwise Conv of a spatially correlated HardSwish (rules/input_pairs.py) and the marginal
Edgeworth terms through a BatchNorm (rules/edgeworth.py), against numpy and onnxruntime."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from onnxinit.rules.input_pairs import joint_cumulants, pair_terms
from onnxinit.rules.pool_pairs import pair_sums
from tests.models import make_model
from tests.oracle import monte_carlo, predict


def _hardswish(x):
    return x * np.clip(x / 6.0 + 0.5, 0.0, 1.0)


def _correlated_field(rng, samples, size, mean):
    """y = mean + (e_u + b e_(u+1)) per axis over sqrt(1 + b^2)^2: rho(1) = b / (1 + b^2)."""
    b = 0.3
    e = rng.standard_normal((samples, size + 1, size + 1))
    rows = (e[:, :-1] + b * e[:, 1:])
    y = (rows[:, :, :-1] + b * rows[:, :, 1:]) / (1 + b * b)
    r1 = b / (1 + b * b)
    rho = np.zeros((1, 5, 5))
    rho[0, 2, 2] = 1.0
    for dy, dx in np.ndindex(3, 3):
        ry = (1.0, r1, 0.0)[dy]
        rx = (1.0, r1, 0.0)[dx]
        for sy in (1, -1):
            for sx in (1, -1):
                rho[0, 2 + sy * dy, 2 + sx * dx] = ry * rx
    return y + mean, rho


def test_joint_cumulants_of_two_positions_match_numpy():
    # a bivariate Gaussian of correlation r through HardSwish: k(x,x,x'), k(x,x,x',x'),
    # k(x,x,x,x') by Monte Carlo (2e6 pairs) against Mehler's series
    rng = np.random.default_rng(0)
    m, s = 0.4, 1.3
    for r in (0.2, 0.5):
        a = rng.standard_normal(2_000_000)
        b = r * a + np.sqrt(1 - r * r) * rng.standard_normal(a.size)
        x, x2 = (_hardswish(m + s * v) for v in (a, b))
        x, x2 = x - x.mean(), x2 - x2.mean()
        nu = (x * x).mean()
        c = (x * x2).mean()
        k3 = (x * x * x2).mean()
        k22 = (x * x * x2 * x2).mean() - nu * nu - 2 * c * c
        k31 = (x**3 * x2).mean() - 3 * nu * c
        rho = np.array([[r, 1.0, r]])  # offsets -1, 0, 1
        got = joint_cumulants(np.array([m]), np.array([s]), [_hardswish], rho)
        for want, field in zip((k3, k22, k31), got):
            assert field[0, 1] == 0.0
            np.testing.assert_allclose(field[0, 2], want, rtol=0.04, atol=2e-3 * nu**1.5)


def test_depthwise_third_and_fourth_cumulants_of_a_correlated_input():
    # k(z_p, z_p, z_(p+d)) and k(z_p, z_p, z_q, z_q) of a 3x3 depthwise Conv of HardSwish(y),
    # y a Gaussian field correlated 0.275 at lag 1 (0.076 diagonally), interior outputs, summed
    # over the offsets with |d| <= 2: numpy (60000 samples) against the independent inputs'
    # terms alone (pool_pairs.pair_sums: 0.33-0.81 of the measured) and with
    # input_pairs.pair_terms added (0.88-1.04; left out: three distinct inputs' cumulants,
    # second order in the correlation)
    rng = np.random.default_rng(1)
    size, mean, samples = 9, 0.3, 60000
    y, rho = _correlated_field(rng, samples, size, mean)
    x = _hardswish(y)
    xc = x - x.mean()
    k3x, k4x = (xc**3).mean(), (xc**4).mean() - 3 * (xc**2).mean() ** 2
    w = rng.standard_normal((4, 1, 3, 3)) / 3
    w[:, 0, 1, 1] += 1.0  # kernels of one sign at the centre: their terms do not cancel
    n_out = size - 2
    z = np.zeros((samples, 4, n_out, n_out))
    for ty, tx in np.ndindex(3, 3):
        z += w[None, :, 0, ty, tx, None, None] * x[:, None, ty:ty + n_out, tx:tx + n_out]
    z -= z.mean(axis=0)
    p = n_out // 2  # the centre output and its neighbours at |d| <= 2
    radius = (2, 2)
    got3 = np.zeros((4, 5, 5))
    got4 = np.zeros((4, 5, 5))
    zp = z[:, :, p, p]
    for dy, dx in np.ndindex(5, 5):
        zq = z[:, :, p + dy - 2, p + dx - 2]
        got3[:, dy, dx] = 0.5 * ((zp * zp * zq).mean(0) + (zp * zq * zq).mean(0))
        cov = (zp * zq).mean(0)
        got4[:, dy, dx] = ((zp * zp * zq * zq).mean(0) - (zp * zp).mean(0) * (zq * zq).mean(0)
                           - 2 * cov * cov)
    own3, own4 = pair_sums(w, [1, 1], [1, 1], [0, 0], [size] * 2, [n_out] * 2, list(radius))
    own3, own4 = own3 * k3x, own4 * k4x
    joint = joint_cumulants(np.array([mean]), np.array([1.0]), [_hardswish], rho)
    add3, add4 = pair_terms(w, [1, 1], [1, 1], joint, radius)
    off = np.ones((5, 5), bool)
    off[2, 2] = False
    for got, own, add in ((got3, own3, add3), (got4, own4, add4)):
        measured = got[:, off].sum(axis=1)
        alone = own[:, off].sum(axis=1)
        both = (own + add)[:, off].sum(axis=1)
        # the independent inputs' terms miss the correlated part
        assert np.min(np.abs(alone / measured - 1)) > 0.1
        np.testing.assert_allclose(both, measured, rtol=0.14)


def _se_block(shape, seed):
    """x -> 3x3 Conv -> BatchNorm -> HardSwish ("h": correlated positions) -> 5x5 depthwise
    Conv -> BatchNorm -> HardSwish ("a") -> GlobalAveragePool ("ya"), BatchNorm on batch
    statistics."""
    rng = np.random.default_rng(seed)
    c = shape[1]
    consts = {"w1": rng.standard_normal((c, c, 3, 3)) / np.sqrt(9 * c),
              "wd": rng.standard_normal((c, 1, 5, 5)) / 5}
    for name in "1d":
        consts.update({f"g{name}": np.ones(c), f"b{name}": np.zeros(c),
                       f"m{name}": np.zeros(c), f"v{name}": np.ones(c)})

    def bn(name, x, y):
        return helper.make_node("BatchNormalization", [x] + [f"{p}{name}" for p in "gbmv"],
                                [y, f"rm{name}", f"rv{name}"], training_mode=1)

    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1] * 4), bn("1", "c1", "u"),
             helper.make_node("HardSwish", ["u"], ["h"]),
             helper.make_node("Conv", ["h", "wd"], ["cd"], pads=[2] * 4, group=c),
             bn("d", "cd", "n"), helper.make_node("HardSwish", ["n"], ["a"]),
             helper.make_node("GlobalAveragePool", ["a"], ["ya"])]
    return make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("a", "ya")],
        [numpy_helper.from_array(v.astype(np.float32), n) for n, v in consts.items()],
        opset=14)


def test_hardswish_after_a_batchnormed_depthwise_conv_keeps_each_channels_skewness():
    # each channel's HardSwish variance moves with its depthwise output's skewness (sign of
    # the kernel's cubes): the Gaussian of the BatchNorm's output alone gives every channel
    # nearly the same. Measured by onnxruntime over 3000 samples, 24 channels on 10x10
    x = Moments.scalar(0.0, 1.0)
    model = _se_block((3000, 24, 10, 10), seed=0)
    _, result = predict(model, {"x": x})
    values = monte_carlo(model, {"x": x})
    a = values["a"].astype(np.float64)
    measured = a.var(axis=(0, 2, 3))
    predicted = np.broadcast_to(result.moments["a"].values_along(1, 24)[1], (24,))
    assert np.corrcoef(measured, predicted)[0, 1] > 0.95
    np.testing.assert_allclose(predicted, measured, rtol=0.06)
    pooled = values["ya"].astype(np.float64).reshape(3000, 24).var(axis=0).mean()
    np.testing.assert_allclose(float(np.mean(result.moments["ya"].var)), pooled, rtol=0.08)
