"""Pooling rules against Monte Carlo runs of the same node in onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from onnxinit.rules.maxima import max_moments
from onnxinit.spatial import within_variance
from tests.models import make_model
from tests.oracle import assert_moments_close, check_rule, monte_carlo, node_model, predict

PER_CHANNEL = Moments.along([-1.0, 0.0, 0.5, 2.0], [0.5, 1.0, 2.0, 0.25], axis=1, rank=4)
SHIFTED = Moments.scalar(0.7, 1.5)


@pytest.mark.parametrize(
    "attrs",
    [
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1},
        {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1},
        {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1, "pads": [1, 0, 1, 0],
         "count_include_pad": 1},
        {"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER"},
        {"kernel_shape": [2, 2], "dilations": [2, 2], "pads": [1, 1, 1, 1]},
    ],
)  # fmt: skip
def test_average_pool(attrs):
    node = helper.make_node("AveragePool", ["x"], ["y"], **attrs)
    model = node_model(node, {"x": (4000, 4, 9, 9)}, opset=19)
    check_rule(model, {"x": PER_CHANNEL})


def test_average_pool_padding_counted_changes_the_mean():
    node = helper.make_node(
        "AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1
    )
    model = node_model(node, {"x": (100, 4, 4, 4)})
    _, result = predict(model, {"x": PER_CHANNEL})
    # interior windows keep mu; border ones see 4 or 6 of 9 taps: 16 positions, 4 corners
    # (4/9), 8 edges (6/9), 4 interior (1)
    factor = (4 * 4 / 9 + 8 * 6 / 9 + 4) / 16
    np.testing.assert_allclose(
        result.moments["y"].mean.ravel(), [-factor, 0, 0.5 * factor, 2 * factor]
    )


def test_global_average_pool_is_nu_over_k():
    node = helper.make_node("GlobalAveragePool", ["x"], ["y"])
    model = node_model(node, {"x": (100_000, 4, 3, 3)})
    result = check_rule(model, {"x": PER_CHANNEL})
    np.testing.assert_allclose(result.moments["y"].var.ravel(), PER_CHANNEL.var.ravel() / 9)


@pytest.mark.parametrize(
    "attrs",
    [
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
        {"kernel_shape": [2, 2], "strides": [2, 2]},
        {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1},
        {"kernel_shape": [3, 3], "dilations": [2, 2], "pads": [2, 1, 2, 1]},
        # (onnxruntime 1.31 ignores dilations when it resolves SAME padding: not combined here)
        {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_LOWER"},
    ],
)
def test_max_pool(attrs):
    node = helper.make_node("MaxPool", ["x"], ["y", "indices"], **attrs)
    model = node_model(node, {"x": (4000, 4, 9, 9)})
    model.graph.output[1].type.tensor_type.elem_type = TensorProto.INT64
    result = check_rule(model, {"x": PER_CHANNEL})
    assert "indices" not in result.moments


def test_global_max_pool():
    node = helper.make_node("GlobalMaxPool", ["x"], ["y"])
    model = node_model(node, {"x": (100_000, 4, 3, 3)})
    check_rule(model, {"x": PER_CHANNEL})


def relu_then(node, shape):
    nodes = [helper.make_node("Relu", ["x"], ["r"]), node]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("r", "y")],
    )


def test_relu_then_max_pool_samples_the_rectified_gaussian():
    node = helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[2, 2], strides=[2, 2])
    model = relu_then(node, (8000, 4, 8, 8))
    result = check_rule(model, {"x": PER_CHANNEL})
    # a Gaussian with the post-ReLU moments (AutoInit's sampling) is measurably wrong
    r = result.moments["r"]
    ((naive_mean, naive_var),) = max_moments(Moments(r.mean, r.var).with_source().source, [4], 4)
    values = monte_carlo(model, {"x": PER_CHANNEL})["y"].astype(np.float64)
    measured = (values**2).mean(axis=(0, 2, 3))
    naive = (naive_var + naive_mean**2).ravel()
    assert np.max(np.abs(naive / measured - 1)) > 0.1


def test_swish_then_global_max_pool_uses_the_fused_distribution():
    from onnxinit.moments import Source
    from onnxinit.propagate import rule_context
    from onnxinit.rules.fusion import fused_elementwise

    nodes = [
        helper.make_node("Sigmoid", ["x"], ["s"]),
        helper.make_node("Mul", ["x", "s"], ["w"]),
        helper.make_node("GlobalMaxPool", ["w"], ["y"]),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [100_000, 4, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    graph, result = predict(model, {"x": PER_CHANNEL})
    node_id = graph.producer["w"]
    ctx = rule_context(graph, node_id, result)
    (w,) = fused_elementwise([result.moments["x"], result.moments["s"]], ctx)
    assert isinstance(w.source, Source)
    ((mean, var),) = max_moments(w.source, [4], 4)
    values = monte_carlo(model, {"x": PER_CHANNEL})["y"]
    assert_moments_close(Moments(mean, var), values, axis=1)


def test_max_moments_match_the_gaussian_order_statistics():
    from onnxinit.moments import Source

    # E[max of 2 standard normals] = 1/sqrt(pi); Var = 1 - 1/pi
    ((e, v),) = max_moments(Source(np.float64(0.0), np.float64(1.0)), [2], 0)
    assert e == pytest.approx(1 / np.sqrt(np.pi), rel=1e-5)
    assert v == pytest.approx(1 - 1 / np.pi, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# position classes and correlated neighbours (onnxinit.spatial, onnxinit.correlation)


def _conv_block(tail, shape, seed=3, channels=6, depthwise=True):
    """Conv(3x3, pad 1, bias) -> ReLU -> ``tail`` nodes reading "r", output "y"."""
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)
    c = shape[1]
    w = rng.standard_normal((c, 1, 3, 3) if depthwise else (channels, c, 3, 3)) * 0.5
    b = rng.uniform(-0.5, 0.5, w.shape[0])
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1],
                              group=c if depthwise else 1),
             helper.make_node("Relu", ["c"], ["r"])] + tail
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w.astype(np.float32), "w"),
         numpy_helper.from_array(b.astype(np.float32), "b")],
    )


def test_global_average_pool_of_correlated_positions():
    # a depthwise 3x3 kernel correlates each channel's neighbours with its own pattern: the
    # mean over the 1024 positions then has (1/K) sum_d n(d) rho(d) times the independent
    # variance (0.5x to 2x here), the border positions have other means and variances (padding,
    # bias). The model takes the interior's correlation everywhere: right for a map whose
    # interior dominates: on 32x32 within 8% per channel (16x16: 18%, 6x6: 29%), where
    # independent positions would be 0.5x-2x off
    model = _conv_block([helper.make_node("GlobalAveragePool", ["r"], ["y"])],
                        (6000, 4, 32, 32))
    x = Moments.along([0.3, -0.2, 0.0, 0.5], [1.0, 0.5, 2.0, 1.5], axis=1, rank=4)
    result = check_rule(model, {"x": x}, rtol=0.08)
    sp = result.moments["r"].spatial
    independent = within_variance(sp, 4) / (32 * 32)
    predicted = result.moments["y"].var.reshape(-1)
    assert np.max(np.abs(np.log(predicted / independent))) > np.log(1.4)  # the effect is large


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [2, 2], "strides": [2, 2]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
])
def test_pools_of_a_padded_relu_map_per_position_class(attrs):
    # MaxPool/AveragePool of a padded Conv's ReLU: border windows hold other Gaussians (the
    # max of different Gaussians, per class). The maximum takes the taps as independent: a
    # conv over 16 channels leaves its neighbours' correlations within +-0.1 (over 5 channels,
    # +-0.3, and a channel's maximum is 6% off)
    rng = np.random.default_rng(4)
    x = Moments.along(rng.uniform(-0.3, 0.3, 16), rng.uniform(0.5, 2.0, 16), axis=1, rank=4)
    for op in ("MaxPool", "AveragePool"):
        model = _conv_block([helper.make_node(op, ["r"], ["y"], **attrs)], (10000, 16, 7, 7),
                            depthwise=False)
        result = check_rule(model, {"x": x}, rtol=0.04)
        assert result.moments["y"].spatial is not None


def test_max_pool_of_correlated_neighbours():
    # a smoothing depthwise kernel (all taps positive) makes neighbours correlated at ~0.65
    # (sides) and ~0.45 (diagonals) before the ReLU: their maximum spreads less than four
    # independent draws. Taken as independent, the means come out 1.25-1.5x the measured; with
    # one common correlation per window, the means within 2% (4% of the standard deviation:
    # the border's correlation is taken as the interior's), the variances within 3%
    from onnx import numpy_helper

    rng = np.random.default_rng(7)
    c = 4
    w = 0.3 + 0.05 * rng.standard_normal((c, 1, 3, 3))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], group=c),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[2, 2], strides=[2, 2])]
    model = make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1500, c, 24, 24])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w.astype(np.float32), "w")])
    x = Moments.along([0.2, -0.1, 0.0, 0.3], [1.0, 0.5, 2.0, 1.5], axis=1, rank=4)
    result = check_rule(model, {"x": x}, rtol=0.05)
    r = result.moments["r"].spatial
    assert r.corr is not None and np.all(r.corr.gaussian()[0][:, 7, 6] > 0.5)


# the pool of a depthwise conv's activation: non-Gaussian energy correlation (rules/pool_skewness)


def _depthwise_block(shape, act_in, act_out, seed, bn=False):
    """act_in -> depthwise Conv(3x3, pad 1, bias) [-> BatchNorm (batch statistics, one
    negative scale)] -> act_out -> GlobalAveragePool."""
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)
    c = shape[1]
    w = rng.standard_normal((c, 1, 3, 3)) * 0.4
    b = rng.uniform(-0.3, 0.3, c)
    consts = {"w": w, "b": b}
    nodes = [helper.make_node(act_in, ["x"], ["h"]),
             helper.make_node("Conv", ["h", "w", "b"], ["c"], pads=[1, 1, 1, 1], group=c)]
    if bn:
        consts.update(g=rng.uniform(0.5, 1.5, c) * np.sign(np.arange(c) - 0.5), beta=b,
                      rm=np.zeros(c), rv=np.ones(c))
        nodes.append(helper.make_node("BatchNormalization", ["c", "g", "beta", "rm", "rv"],
                                      ["n", "m_out", "v_out"], training_mode=1))
    nodes += [helper.make_node(act_out, ["n" if bn else "c"], ["a"]),
              helper.make_node("GlobalAveragePool", ["a"], ["y"])]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v.astype(np.float32), n) for n, v in consts.items()],
    )


@pytest.mark.parametrize("act_in,act_out,bn,rtol", [
    ("HardSwish", "HardSwish", False, 0.07), ("Relu", "Relu", False, 0.07),
    ("HardSwish", "HardSwish", True, 0.12),
])
def test_global_average_pool_of_a_depthwise_conv_of_skewed_inputs(act_in, act_out, bn, rtol):
    # a depthwise 3x3 conv sums 9 skewed, heavy-tailed inputs (a ReLU or HardSwish of N(0, 1)):
    # neighbours share large inputs, so their energies are correlated and the pooled activation
    # varies more (or, by the third cumulant, less) than for Gaussian positions of the same
    # covariance. Over the 6 channels' total: 1.06 / 1.01 of onnxruntime's with the Edgeworth
    # terms, 0.72 / 0.67 without (per channel the Gaussian part alone is 0.5x-1.9x off here);
    # through a training-mode BatchNorm (unit-scale z, one negative scale) 1.10 against 0.54:
    # the first-order terms overshoot a little where f bends more over z's range
    model = _depthwise_block((20000, 6, 16, 16), act_in, act_out, seed=2, bn=bn)
    x = Moments.scalar(0.0, 1.0)
    _, result = predict(model, {"x": x})
    values = monte_carlo(model, {"x": x})["y"].astype(np.float64)
    assert result.rules["y"] == "global_average_pool"
    predicted = result.moments["y"].var.sum()
    measured = values.var(axis=(0, 2, 3)).sum()
    np.testing.assert_allclose(predicted, measured, rtol=rtol)


def test_max_pool_of_concatenated_relu_branches():
    # an Inception block: every branch ends in a ReLU, the Concat of their outputs feeds a
    # MaxPool. The maximum must see the rectified law of each branch (a Gaussian source under
    # a common ReLU chain), not a Gaussian with the ReLU's two moments: that under-predicts
    # the maximum's variance 2-2.5x (GoogLeNet's pools at 0.4x measured)
    from onnx import numpy_helper

    rng = np.random.default_rng(11)
    c = 16  # input channels: the 3x3 branch's neighbour correlations stay within +-0.1
    consts = {"w3": rng.standard_normal((4, c, 3, 3)) / np.sqrt(9 * c),
              "w1": rng.standard_normal((4, c, 1, 1)) * 1.5 / np.sqrt(c)}
    nodes = [helper.make_node("Conv", ["x", "w3"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "w1"], ["b"]),
             helper.make_node("Relu", ["a"], ["ra"]),
             helper.make_node("Relu", ["b"], ["rb"]),
             helper.make_node("Concat", ["ra", "rb"], ["r"], axis=1),
             helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                              ceil_mode=1)]
    model = make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2000, c, 9, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v.astype(np.float32), n) for n, v in consts.items()])
    result = check_rule(model, {"x": Moments.scalar(0.0, 1.0)}, rtol=0.08)
    assert result.moments["r"].spatial.cells.source is not None


def test_average_pool_after_a_wide_conv_of_a_batch_norm(monkeypatch):
    """A Conv too wide for the exact correlation sum (``CONV_BUDGET``: DenseNet-169's 1x1
    transition conv, 1280 -> 640 channels on an 8x8 map) keeps one correlation for all its
    channels but the batch-centred fraction per channel; the AveragePool after it failed on
    the two shapes ("could not be broadcast", the empirical fallback measured it). Against
    onnxruntime (training-mode BatchNorm, 40 batches of 8)."""
    import onnxinit.correlation

    monkeypatch.setattr(onnxinit.correlation, "CONV_BUDGET", 0)
    rng = np.random.default_rng(3)
    c = 6
    consts = {"w1": rng.standard_normal((c, 4, 3, 3)) / 6,
              "w2": rng.standard_normal((c, c, 1, 1)) / 2, "g": np.ones(c), "b": np.zeros(c), "m": np.zeros(c), "v": np.ones(c)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["h", "g", "b", "m", "v"], ["n", "rm", "rv"],
                              training_mode=1),
             helper.make_node("Relu", ["n"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["t"]),
             helper.make_node("AveragePool", ["t"], ["y"], kernel_shape=[2, 2], strides=[2, 2])]
    model = make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v.astype(np.float32), n) for n, v in consts.items()])
    x = Moments.scalar(0.0, 1.0)
    _, result = predict(model, {"x": x})
    assert result.rules["y"] == "average_pool"
    samples = np.concatenate([monte_carlo(model, {"x": x}, seed=s)["y"] for s in range(40)])
    assert_moments_close(result.moments["y"], samples, rtol=0.05)


@pytest.mark.parametrize("k", [1, 5])
def test_max_pool_of_a_conv1d_reshaped_to_a_map(k):
    """tf2onnx's Keras Conv1D + ReLU + MaxPooling1D: the Conv as a 2-D Conv on [N, C, 1, T],
    squeezed to [N, C, T], the ReLU, then Unsqueeze and Reshape to [N, C, T, 1] for a MaxPool
    over T. Putting the map back dropped the ReLU's law (and a padded kernel's border
    positions): the pool took a Gaussian with the ReLU's moments, 0.53x of the measured
    variance (the Keras Conv1D + GRU classifier's pool). Against onnxruntime."""
    b, c, t = 64, 32, 32
    rng = np.random.default_rng(0)
    consts = {"ax1": np.array([1]), "ax2": np.array([2]), "shape4": np.array([b, c, t, 1]),
              "w": rng.standard_normal((c, c, 1, k)) / np.sqrt(c * k)}
    nodes = [helper.make_node("Unsqueeze", ["x", "ax2"], ["xe"]),
             helper.make_node("Conv", ["xe", "w"], ["c4"], pads=[0, k // 2, 0, k // 2]),
             helper.make_node("Squeeze", ["c4", "ax2"], ["s"]),
             helper.make_node("Relu", ["s"], ["r"]),
             helper.make_node("Unsqueeze", ["r", "ax1"], ["u"]),
             helper.make_node("Reshape", ["u", "shape4"], ["r4"]),
             helper.make_node("MaxPool", ["r4"], ["y"], kernel_shape=[2, 1], strides=[2, 1])]
    model = make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, c, t])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v.astype(np.float32 if n == "w" else np.int64), n)
         for n, v in consts.items()])
    x = Moments.scalar(0.0, 1.0)
    _, result = predict(model, {"x": x})
    samples = np.concatenate([monte_carlo(model, {"x": x}, seed=s)["y"] for s in range(4)])
    assert_moments_close(result.moments["y"], samples, rtol=0.03)
