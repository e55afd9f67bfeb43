"""Correlated channels of a 1x1 Conv's output read by the next 1x1 Conv (a linear bottleneck's
projection, then the next block's expansion): predicted against onnxruntime runs."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from onnxinit.rules.covariance_maps import mehler
from tests.models import make_model
from tests.oracle import monte_carlo, predict

C, WIDE, SIDE, N = 8, 48, 6, 4000


def _chain_model(between: str, seed: int):
    """x -> Relu -> Conv 1x1 (C -> C) -> [between] -> Conv 1x1 (C -> WIDE) -> y: the second
    Conv sums channels that the first one made correlated (``between``: nothing; an Add of
    an independent skip, ``Relu(x2)``; a Sub of another correlated operand, ``Conv(Relu(x2))``;
    a Mul by per-channel constants of both signs)."""
    rng = np.random.default_rng(seed)
    v = (rng.standard_normal((C, C, 1, 1)) * np.sqrt(2.0 / C)).astype(np.float32)
    w = (rng.standard_normal((WIDE, C, 1, 1)) * np.sqrt(1.0 / C)).astype(np.float32)
    inits = [numpy_helper.from_array(v, "v"), numpy_helper.from_array(w, "w")]
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Conv", ["r", "v"], ["p"])]
    z = "p"
    if between == "residual":  # a skip independent of the branch (its own input)
        nodes += [helper.make_node("Relu", ["x2"], ["r2"]),
                  helper.make_node("Add", ["r2", "p"], ["s"])]
        z = "s"
    elif between == "sum":  # two correlated-channel operands
        v2 = (rng.standard_normal((C, C, 1, 1)) * np.sqrt(2.0 / C)).astype(np.float32)
        inits.append(numpy_helper.from_array(v2, "v2"))
        nodes += [helper.make_node("Relu", ["x2"], ["r2"]),
                  helper.make_node("Conv", ["r2", "v2"], ["q"]),
                  helper.make_node("Sub", ["p", "q"], ["s"])]
        z = "s"
    elif between == "scale":
        inits.append(numpy_helper.from_array(
            np.linspace(-2, 2, C).astype(np.float32).reshape(1, C, 1, 1), "k"))
        nodes.append(helper.make_node("Mul", ["p", "k"], ["s"]))
        z = "s"
    nodes.append(helper.make_node("Conv", [z, "w"], ["y"]))
    xs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [N, C, SIDE, SIDE])
          for n in ("x", "x2") if n == "x" or between in ("residual", "sum")]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    moments = {i.name: Moments.scalar(0.0, 1.0) for i in xs}
    return make_model(nodes, xs, [y], inits), moments


@pytest.mark.parametrize("between", ["none", "residual", "sum", "scale"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conv_of_correlated_channels(between, seed):
    model, moments = _chain_model(between, seed)
    _, result = predict(model, moments)
    y = monte_carlo(model, moments)["y"].astype(np.float64)
    got = result.moments["y"].values_along(1, WIDE)
    # channels taken as independent: the expansion's channels 0.1-2x the measured variance
    # (with 8 channels their cross terms are of the order of their diagonal), the total up to
    # 14% off; with the first Conv's covariance within 1% per channel, 0.6% in total
    np.testing.assert_allclose(got[1], y.var(axis=(0, 2, 3)), rtol=0.04)
    np.testing.assert_allclose(result.moments["y"].total()[1], y.var(), rtol=0.01)


def _stem_model(after: str, seed: int, running: bool = False):
    """x (3 channels) -> Conv 3x3 (3 -> C, padded) -> [after] -> Conv 1x1 (C -> WIDE) -> y:
    the stem's channels share the same 27 input values, so they are correlated, and the 1x1
    Conv sums them (``after``: "relu"; "bn_relu": a training-mode BatchNorm then ReLU;
    "gate": ReLU times a squeeze-excite gate, Sigmoid of a global pool's 1x1 Conv).
    ``running``: a training-mode BatchNorm of y with its running statistics as outputs."""
    rng = np.random.default_rng(seed)
    k = (rng.standard_normal((C, 3, 3, 3)) * np.sqrt(2.0 / 27)).astype(np.float32)
    w = (rng.standard_normal((WIDE, C, 1, 1)) * np.sqrt(1.0 / C)).astype(np.float32)
    e = (rng.standard_normal((C, C, 1, 1)) * np.sqrt(1.0 / C)).astype(np.float32)
    ones, zeros = np.ones(C, np.float32), np.zeros(C, np.float32)
    inits = [numpy_helper.from_array(a, n) for n, a in
             {"k": k, "w": w, "e": e, "g": ones, "b": zeros,
              "gw": np.ones(WIDE, np.float32), "bw": np.zeros(WIDE, np.float32),
              "rmw": np.zeros(WIDE, np.float32), "rvw": np.ones(WIDE, np.float32)}.items()]
    nodes = [helper.make_node("Conv", ["x", "k"], ["h"], pads=[1, 1, 1, 1])]
    outputs = ["y"]
    if after == "bn_relu":
        nodes += [helper.make_node("BatchNormalization", ["h", "g", "b", "b", "g"],
                                   ["hn", "m1", "v1"], training_mode=1),
                  helper.make_node("Relu", ["hn"], ["r"])]
        outputs += ["m1", "v1"]
    else:
        nodes.append(helper.make_node("Relu", ["h"], ["r"]))
    z = "r"
    if after == "gate":
        nodes += [helper.make_node("GlobalAveragePool", ["r"], ["p"]),
                  helper.make_node("Conv", ["p", "e"], ["q"]),
                  helper.make_node("Sigmoid", ["q"], ["s"]),
                  helper.make_node("Mul", ["r", "s"], ["gated"])]
        z = "gated"
    nodes.append(helper.make_node("Conv", [z, "w"], ["y"]))
    if running:
        nodes.append(helper.make_node("BatchNormalization", ["y", "gw", "bw", "rmw", "rvw"],
                                      ["yn", "running_mean", "running_var"], training_mode=1))
        outputs += ["yn", "running_mean", "running_var"]
    batch = 8 if running else N
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, SIDE, SIDE])
    # every running output is a graph output: onnxruntime's optimizer otherwise runs a
    # BatchNorm with unused running outputs in inference mode
    ys = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs]
    return make_model(nodes, [x], ys, inits), {"x": Moments.scalar(0.0, 1.0)}


@pytest.mark.parametrize("after", ["relu", "bn_relu", "gate"])
@pytest.mark.parametrize("seed", [0, 1])
def test_conv_of_a_stems_correlated_channels(after, seed):
    """The channels of a kxk Conv of shared inputs, through a ReLU (and a BatchNorm, a gate):
    channels taken as independent, the 1x1 Conv's per-channel variances were 0.69-1.47x the
    measured (the six cases); 0.98-1.06x with the stem's covariance carried (each tap
    weighted by its share of positions inside the input: 0.94-1.07x without)."""
    model, moments = _stem_model(after, seed)
    _, result = predict(model, moments)
    y = monte_carlo(model, moments)["y"].astype(np.float64)
    got = result.moments["y"].values_along(1, WIDE)[1]
    np.testing.assert_allclose(got, y.var(axis=(0, 2, 3)), rtol=0.08)


@pytest.mark.parametrize("seed", [0, 1])
def test_running_variance_spread_follows_the_channels_covariance(seed):
    """BatchNormalization's running variance (training mode, batch 8) is a [C] vector whose
    spread across channels is mostly the spread of the channels' variances, which the stem's
    channel covariance sets: its variance, pooled over 64 batches, was predicted 0.76-0.84x
    (the two seeds), 0.95-0.98x now."""
    from onnxinit.runtime import make_session

    model, moments = _stem_model("bn_relu", seed, running=True)
    _, result = predict(model, moments)
    session = make_session(model, device="cpu", optimize=False)
    rng = np.random.default_rng(seed)
    runs = np.stack([session.run(["running_var"], {
        "x": rng.standard_normal((8, 3, SIDE, SIDE)).astype(np.float32)})[0]
        for _ in range(64)]).astype(np.float64)
    predicted = result.moments["running_var"].total()[1]
    assert predicted == pytest.approx(runs.var(), rel=0.10)


def test_mehler_map_of_a_channel_with_no_spread_stays_finite():
    """A channel whose variance is a float64 denormal (5e-158 standard deviation: a dead
    channel after a ReLU and a squeeze-excite gate) made 1 / sd^2 overflow, and its inf times
    a zero covariance put NaN into every pair with it: a Conv after it predicted NaN. Such a
    channel covaries with none; the other pairs follow Mehler's formula on the correlations."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 5))
    s_x = a @ a.T / 5 + np.eye(4)
    s_x[3, :] = s_x[:, 3] = 0.0
    s_x[3, 3] = (5e-158) ** 2
    amplitudes = rng.uniform(0.1, 1.0, (3, 4))
    amplitudes[:, 3] = 2e-158
    nu = np.array([1.0, 2.0, 3.0, 1e-315])
    out = mehler(s_x, amplitudes, nu)
    assert np.all(np.isfinite(out))
    sd = np.sqrt(np.diag(s_x)[:3])
    rho = s_x[:3, :3] / np.outer(sd, sd)
    expected = (np.outer(amplitudes[1, :3], amplitudes[1, :3]) * rho
                + np.outer(amplitudes[2, :3], amplitudes[2, :3]) * rho**2)
    np.fill_diagonal(expected, nu[:3])
    np.testing.assert_allclose(out[:3, :3], expected, rtol=1e-12)
    assert np.all(out[3, :3] == 0.0) and np.all(out[:3, 3] == 0.0)
