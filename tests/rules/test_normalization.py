"""Normalization rules against Monte Carlo runs of the same node in onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.models import make_model
from tests.oracle import assert_moments_close, monte_carlo, node_model, predict

C = 4
NCHW = (1000, C, 10, 10)  # 100k elements per channel
PER_CHANNEL = Moments.along([-1.0, 0.0, 0.5, 2.0], [0.5, 1.0, 2.0, 0.25], axis=1, rank=4)
RNG = np.random.default_rng(7)
GAMMA = np.array([0.5, -1.5, 2.0, 1.0], dtype=np.float32)
BETA = np.array([0.3, -0.2, 0.0, 1.0], dtype=np.float32)


def check(model, moments, out="y", axis=1, rtol=0.05):
    _, result = predict(model, moments)
    values = monte_carlo(model, moments)
    assert result.rules[out] not in ("empirical", "pass-through"), result.fallbacks
    assert_moments_close(result.moments[out], values[out], rtol=rtol, axis=axis)
    return result


@pytest.mark.parametrize("eps", [1e-5, 0.5])
def test_batch_normalization_training_per_channel(eps):
    node = helper.make_node(
        "BatchNormalization",
        ["x", "g", "b", "rm", "rv"],
        ["y", "running_mean", "running_var"],
        epsilon=eps,
        training_mode=1,
    )
    constants = {"g": GAMMA, "b": BETA, "rm": np.zeros(C, np.float32), "rv": np.ones(C, np.float32)}
    model = node_model(node, {"x": NCHW}, constants)
    result = check(model, {"x": PER_CHANNEL})
    m = result.moments["y"]
    np.testing.assert_allclose(m.mean.ravel(), BETA, rtol=1e-6, atol=1e-6)
    nu = PER_CHANNEL.var.ravel()
    np.testing.assert_allclose(m.var.ravel(), GAMMA.astype(float) ** 2 * nu / (nu + eps), rtol=1e-4)


def _running_model(shape, momentum=0.9):
    node = helper.make_node("BatchNormalization", ["x", "g", "b", "rm", "rv"],
                            ["y", "running_mean", "running_var"], momentum=momentum,
                            training_mode=1)
    c = shape[1]
    rng = np.random.default_rng(3)
    constants = {"g": np.ones(c, np.float32), "b": np.zeros(c, np.float32),
                 "rm": rng.uniform(-0.5, 0.5, c).astype(np.float32),
                 "rv": rng.uniform(0.5, 1.5, c).astype(np.float32)}
    return node_model(node, {"x": shape}, constants)


@pytest.mark.parametrize("output", ["running_mean", "running_var"])
def test_batch_normalization_running_statistics_across_channels(output):
    """Training mode's updated running mean and variance, a [C] vector whose spread across
    channels comes from the channels' own means and variances and the previous running
    values (momentum 0.7), against onnxruntime."""
    model = _running_model(NCHW, momentum=0.7)
    _, result = predict(model, {"x": PER_CHANNEL})
    assert_moments_close(result.moments[output], monte_carlo(model, {"x": PER_CHANNEL})[output],
                         rtol=0.01)


@pytest.mark.parametrize("output", ["running_mean", "running_var"])
def test_batch_normalization_running_statistics_of_a_small_batch(output):
    """Channels alike, 4 samples of 4x4 positions: the running statistics vary across channels
    only by the batch's sampling noise (Var[m] = nu / 64, Var[v] = 2 nu^2 / 64, times
    (1 - momentum)^2), against onnxruntime over 4096 channels."""
    shape = (4, 4096, 4, 4)
    model = _running_model(shape)
    uniform = Moments.scalar(0.5, 2.0)
    _, result = predict(model, {"x": uniform})
    values = monte_carlo(model, {"x": uniform})[output].astype(np.float64)
    rm_or_rv = [t for t in model.graph.initializer if t.name == ("rm" if output == "running_mean"
                                                                   else "rv")][0]
    previous = numpy_helper.to_array(rm_or_rv).astype(np.float64)
    noise = values - 0.9 * previous  # (1 - momentum) times the batch statistic
    predicted_noise = result.moments[output].var.mean()
    assert noise.var() == pytest.approx(predicted_noise, rel=0.1)


def test_batch_normalization_after_relu_keeps_the_distribution():
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node(
            "BatchNormalization",
            ["r", "g", "b", "rm", "rv"],
            ["y", "m_out", "v_out"],
            training_mode=1,
        ),
    ]
    inits = [
        helper.make_tensor(n, TensorProto.FLOAT, [C], v)
        for n, v in [("g", GAMMA), ("b", BETA), ("rm", np.zeros(C)), ("rv", np.ones(C))]
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(NCHW))],
        [
            helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
            for o in ("y", "m_out", "v_out")
        ],
        inits,
    )
    result = check(model, {"x": PER_CHANNEL})
    chain = result.moments["y"].source.chain
    assert [f.key[0] for f in chain] == ["Relu", "Affine"]
    # the described distribution reproduces the moments
    sample = result.moments["y"].source.sample(np.random.default_rng(0), (200_000, C, 1, 1))
    np.testing.assert_allclose(sample.var(axis=(0, 2, 3)), GAMMA**2, rtol=0.05)


@pytest.mark.parametrize("eps", [1e-5, 0.3])
def test_instance_normalization(eps):
    node = helper.make_node("InstanceNormalization", ["x", "g", "b"], ["y"], epsilon=eps)
    model = node_model(node, {"x": (250, C, 20, 20)}, {"g": GAMMA, "b": BETA})
    check(model, {"x": PER_CHANNEL})


@pytest.mark.parametrize("opset", [18, 21])
def test_group_normalization_per_group_and_per_channel_scale(opset):
    groups, c = 2, 8
    mu = np.array([-1.0, 1.0, 0.0, 0.5, 2.0, 2.0, -0.5, 0.0])
    nu = np.array([0.5, 1.0, 2.0, 1.0, 0.25, 1.0, 1.0, 3.0])
    moments = Moments.along(mu, nu, axis=1, rank=4)
    size = groups if opset < 21 else c
    g = RNG.uniform(0.5, 2.0, size).astype(np.float32)
    b = RNG.uniform(-1.0, 1.0, size).astype(np.float32)
    node = helper.make_node(
        "GroupNormalization", ["x", "g", "b"], ["y"], num_groups=groups, epsilon=0.1
    )
    model = node_model(node, {"x": (1000, c, 10, 10)}, {"g": g, "b": b}, opset=opset)
    result = check(model, {"x": moments})
    # means within a group differ, so the output means are not beta
    assert np.ptp(result.moments["y"].mean.ravel()[:4]) > 0.5


F = 64
PER_FEATURE = Moments.along(np.linspace(-1, 1, F), np.linspace(0.5, 2.0, F), axis=2, rank=3)


def test_layer_normalization_per_feature_statistics():
    """Per-feature means differ: E is not beta and Var not gamma^2 (formula in the module)."""
    g = RNG.uniform(0.5, 1.5, F).astype(np.float32)
    b = RNG.uniform(-0.5, 0.5, F).astype(np.float32)
    node = helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1, epsilon=1e-5)
    model = node_model(node, {"x": (2000, 50, F)}, {"g": g, "b": b})
    result = check(model, {"x": PER_FEATURE}, axis=2)
    m = result.moments["y"]
    assert np.max(np.abs(m.mean.ravel() - b)) > 0.3  # the naive E = beta is far off
    assert np.max(np.abs(m.var.ravel() / g.astype(float) ** 2 - 1)) > 0.3


def test_layer_normalization_over_channels_and_space():
    g = RNG.uniform(0.5, 1.5, (C, 1, 1)).astype(np.float32)
    node = helper.make_node("LayerNormalization", ["x", "g"], ["y"], axis=1)
    model = node_model(node, {"x": (1000, C, 10, 10)}, {"g": g})
    check(model, {"x": PER_CHANNEL})


def test_mean_variance_normalization():
    node = helper.make_node("MeanVarianceNormalization", ["x"], ["y"])
    model = node_model(node, {"x": NCHW})
    check(model, {"x": PER_CHANNEL})
    node = helper.make_node("MeanVarianceNormalization", ["x"], ["y"], axes=[1, 2, 3])
    model = node_model(node, {"x": NCHW})
    check(model, {"x": PER_CHANNEL})


def test_rms_normalization():
    g = RNG.uniform(0.5, 1.5, F).astype(np.float32)
    node = helper.make_node("RMSNormalization", ["x", "g"], ["y"], axis=-1, epsilon=1e-5)
    model = node_model(node, {"x": (2000, 50, F)}, {"g": g}, opset=23)
    check(model, {"x": PER_FEATURE}, axis=2)


@pytest.mark.parametrize("p", [1, 2])
def test_lp_normalization(p):
    node = helper.make_node("LpNormalization", ["x"], ["y"], axis=-1, p=p)
    model = node_model(node, {"x": (2000, 50, F)})
    check(model, {"x": PER_FEATURE}, axis=2)


def _ms_model(node, inputs, constants):
    inits = [
        helper.make_tensor(n, TensorProto.FLOAT, v.shape, v.ravel()) for n, v in constants.items()
    ]
    return make_model(
        [node],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in node.output if o],
        inits,
        extra_opsets=[("com.microsoft", 1)],
    )


def test_skip_layer_normalization_contrib():
    g = RNG.uniform(0.5, 1.5, F).astype(np.float32)
    b = RNG.uniform(-0.5, 0.5, F).astype(np.float32)
    bias = RNG.uniform(-1.0, 1.0, F).astype(np.float32)
    node = helper.make_node(
        "SkipLayerNormalization",
        ["x", "s", "g", "b", "bias"],
        ["y", "", "", "sum"],
        domain="com.microsoft",
        epsilon=1e-5,
    )
    model = _ms_model(
        node, {"x": (2000, 50, F), "s": (2000, 50, F)}, {"g": g, "b": b, "bias": bias}
    )
    moments = {"x": PER_FEATURE, "s": Moments.scalar(0.5, 1.0)}
    _, result = predict(model, moments)
    values = monte_carlo(model, moments)
    for out in ("y", "sum"):
        assert result.rules[out] != "empirical"
        assert_moments_close(result.moments[out], values[out], axis=2)


def test_simplified_layer_normalization_contrib():
    g = RNG.uniform(0.5, 1.5, F).astype(np.float32)
    node = helper.make_node(
        "SimplifiedLayerNormalization", ["x", "g"], ["y"], axis=-1
    )  # onnxruntime registers it in the default domain
    model = _ms_model(node, {"x": (2000, 50, F)}, {"g": g})
    check(model, {"x": PER_FEATURE}, axis=2)


def test_running_mean_of_a_batch_centred_input_is_the_previous_one():
    """A 1x1 Conv of a sum of two training-mode BatchNorm outputs (MobileNetV2's inverted
    residuals) has, per channel, a batch mean fixed at 0 whatever the samples: the updated
    running mean is momentum times the previous one, with no batch noise. Taken as noisy, it
    was predicted 1e12x the measured variance (which is float rounding). The centring is
    tracked with the spatial correlation, which a padded Conv (every real stem) starts."""
    rng = np.random.default_rng(5)
    c, shape = 32, (8, 32, 6, 6)
    ones, zeros = np.ones(c, np.float32), np.zeros(c, np.float32)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["h", "g", "b", "rm", "rv"],
                              ["n1", "m1", "v1"], training_mode=1),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("BatchNormalization", ["r", "g", "b", "rm", "rv"],
                              ["n2", "m2", "v2"], training_mode=1),
             helper.make_node("Add", ["n1", "n2"], ["s"]),
             helper.make_node("Conv", ["s", "w"], ["y"]),
             helper.make_node("BatchNormalization", ["y", "g", "b", "rm", "rv"],
                              ["z", "running_mean", "running_var"], training_mode=1)]
    model = make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        # every running output is a graph output: onnxruntime's optimizer otherwise runs a
        # BatchNorm with unused running outputs in inference mode
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
         for n in ("z", "running_mean", "y", "m1", "v1", "m2", "v2")],
        [numpy_helper.from_array(v, n) for n, v in
         {"g": ones, "b": zeros, "rm": zeros, "rv": ones,
          "w0": (rng.standard_normal((c, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32),
          "w": (rng.standard_normal((c, c, 1, 1)) / np.sqrt(c)).astype(np.float32)}.items()])
    _, result = predict(model, {"x": Moments.scalar(0.0, 1.0)})
    measured = monte_carlo(model, {"x": Moments.scalar(0.0, 1.0)})
    y_var = measured["y"].astype(np.float64).var()
    assert measured["running_mean"].astype(np.float64).var() < 1e-10 * y_var
    assert float(np.max(result.moments["running_mean"].var)) < 1e-10 * y_var
