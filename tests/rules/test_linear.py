"""Linear rules (Conv, ConvTranspose, Gemm, MatMul with a constant operand) against Monte Carlo
runs of the same node in onnxruntime. A conv output's channel means are correlated within a
sample (overlapping windows), so batches are large."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from onnxinit.spatial import dense
from tests.models import make_model
from tests.oracle import assert_moments_close, monte_carlo, node_model, predict

PC = Moments.along([-1.0, 0.0, 0.5, 2.0], [0.5, 1.0, 2.0, 0.25], axis=1, rank=4)


def weights(shape, seed=0, scale=None):
    rng = np.random.default_rng(seed)
    fan_in = int(np.prod(shape[1:]))
    s = scale if scale is not None else 1 / np.sqrt(fan_in)
    return (rng.standard_normal(shape) * s).astype(np.float32)


def bias(n, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, n).astype(np.float32)


def run(model, moments, out="y", axis=1, rtol=0.05, rule=None, seed=2):
    _, result = predict(model, moments)
    values = monte_carlo(model, moments, seed=seed)
    assert result.rules[out] == rule, (result.rules[out], result.fallbacks)
    assert_moments_close(result.moments[out], values[out], rtol=rtol, axis=axis)
    return result.moments[out]


def per_channel(rank, c=4):
    mean = np.array([-1.0, 0.0, 0.5, 2.0, 1.0, -0.5, 0.2, 0.8][:c])
    var = np.array([0.5, 1.0, 2.0, 0.25, 0.7, 1.3, 0.4, 1.1][:c])
    return Moments.along(mean, var, axis=1, rank=rank)


# ---------------------------------------------------------------------------------------------
# Conv


CONV_CASES = [
    ({"pads": [1, 1, 1, 1]}, (8, 4, 3, 3), 1, (2000, 4, 8, 8)),
    ({"pads": [0, 1, 2, 0], "strides": [2, 2]}, (8, 4, 3, 3), 1, (2000, 4, 9, 9)),
    ({"pads": [2, 2, 2, 2], "dilations": [2, 2]}, (8, 4, 3, 3), 1, (2000, 4, 8, 8)),
    ({"pads": [1, 1, 1, 1], "group": 2}, (8, 2, 3, 3), 2, (2000, 4, 8, 8)),
    ({"pads": [1, 1, 1, 1], "group": 4}, (4, 1, 3, 3), 4, (2000, 4, 8, 8)),  # depthwise
    ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, (8, 4, 4, 4), 1, (2000, 4, 7, 7)),
    ({"auto_pad": "SAME_LOWER", "strides": [2, 2]}, (8, 4, 4, 4), 1, (2000, 4, 7, 7)),
    ({"auto_pad": "VALID"}, (8, 4, 3, 3), 1, (2000, 4, 6, 6)),
    ({"pads": [1, 1, 1, 1], "kernel_shape": [3, 3]}, (8, 4, 3, 3), 1, (2000, 4, 2, 2)),
    ({"pads": [1, 1]}, (6, 4, 3), 1, (8000, 4, 10)),  # 1-D
    ({"pads": [1, 1, 1, 1, 1, 1], "strides": [1, 2, 2]}, (6, 4, 3, 3, 3), 1, (1000, 4, 4, 5, 5)),
]


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize(("attrs", "w_shape", "groups", "x_shape"), CONV_CASES)
def test_conv(attrs, w_shape, groups, x_shape, with_bias):
    consts = {"w": weights(w_shape)}
    ins = ["x", "w"]
    if with_bias:
        consts["b"] = bias(w_shape[0])
        ins.append("b")
    node = helper.make_node("Conv", ins, ["y"], **attrs)
    model = node_model(node, {"x": x_shape}, consts)
    run(model, {"x": per_channel(len(x_shape))}, rule="conv")


def test_conv_identity_kernel_is_exact():
    # a Dirac kernel with a border: structured weights where AutoInit's random-weight formula
    # is wrong; padding positions see only the bias
    w = np.zeros((4, 4, 3, 3), np.float32)
    for c in range(4):
        w[c, c, 1, 1] = 1.0
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    model = node_model(node, {"x": (2000, 4, 6, 6)}, {"w": w})
    m = run(model, {"x": PC}, rule="conv")
    np.testing.assert_allclose(m.mean.ravel(), PC.mean.ravel())
    np.testing.assert_allclose(m.var.ravel(), PC.var.ravel())


# ---------------------------------------------------------------------------------------------
# ConvTranspose


CONVT_CASES = [
    ({"strides": [2, 2]}, (4, 6, 3, 3)),
    ({"strides": [2, 2], "pads": [1, 1, 1, 1]}, (4, 6, 3, 3)),
    ({"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}, (4, 6, 3, 3)),
    ({"strides": [2, 2], "group": 2}, (4, 3, 4, 4)),
    ({"dilations": [2, 2], "pads": [1, 0, 0, 1]}, (4, 6, 3, 3)),
    ({"strides": [2, 2], "auto_pad": "SAME_UPPER"}, (4, 6, 3, 3)),
    ({"strides": [2, 2], "auto_pad": "SAME_LOWER"}, (4, 6, 3, 3)),
    ({"strides": [3, 2], "pads": [0, 1, 2, 0], "output_padding": [2, 1]}, (4, 6, 3, 4)),
]


@pytest.mark.parametrize(("attrs", "w_shape"), CONVT_CASES)
def test_conv_transpose(attrs, w_shape):
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)
    c_out = w_shape[1] * attrs.get("group", 1)
    consts = {"w": weights(w_shape, scale=0.4), "b": bias(c_out)}
    model = node_model(node, {"x": (2000, 4, 5, 5)}, consts)
    run(model, {"x": PC}, rule="conv_transpose")


def test_conv_transpose_1d():
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2], pads=[1, 0])
    model = node_model(node, {"x": (8000, 4, 7)}, {"w": weights((4, 3, 3), scale=0.5)})
    run(model, {"x": per_channel(3)}, rule="conv_transpose")


# ---------------------------------------------------------------------------------------------
# Gemm


FEATURES = Moments.along(np.linspace(-1, 1, 6), np.linspace(0.3, 2.0, 6), axis=1, rank=2)


@pytest.mark.parametrize(
    ("attrs", "c"),
    [
        ({}, None),
        ({"transB": 1}, bias(5)),
        ({"alpha": 0.5, "beta": 2.0}, bias(5).reshape(1, 5)),
        ({"transB": 1, "beta": -1.0}, np.float32(0.7)),
        ({"transA": 1, "transB": 1, "alpha": 1.5}, bias(5)),
    ],
)
def test_gemm_constant_weight(attrs, c):
    w = weights((5, 6)) if attrs.get("transB") else weights((6, 5))
    consts = {"w": w}
    ins = ["x", "w"]
    if c is not None:
        consts["c"] = np.asarray(c)
        ins.append("c")
    node = helper.make_node("Gemm", ins, ["y"], **attrs)
    if attrs.get("transA"):
        x = Moments.along(np.linspace(-1, 1, 6), np.linspace(0.3, 2.0, 6), axis=0, rank=2)
        model = node_model(node, {"x": (6, 200_000)}, consts)
    else:
        x = FEATURES
        model = node_model(node, {"x": (200_000, 6)}, consts)
    run(model, {"x": x}, rule="gemm")


def test_gemm_bias_per_row():
    # C [M, 1]: one bias per row (sample); its spread over the rows adds to each feature's
    # variance. The rule raised on it (a [M, 1] bias broadcast to [N])
    c = np.tile(np.array([[1.0], [-2.0], [0.5], [0.0]], np.float32), (50_000, 1))
    node = helper.make_node("Gemm", ["x", "w", "c"], ["y"], beta=0.5)
    model = node_model(node, {"x": (200_000, 6)}, {"w": weights((6, 5)), "c": c})
    run(model, {"x": FEATURES}, rule="gemm")


def test_gemm_constant_left_operand():
    # Y[m, n] = sum_k W[m, k] X[k, n] + C[m]: per row m
    x = Moments.along(np.linspace(-1, 1, 6), np.linspace(0.3, 2.0, 6), axis=0, rank=2)
    node = helper.make_node("Gemm", ["w", "x", "c"], ["y"], alpha=0.8)
    consts = {"w": weights((5, 6)), "c": bias(5).reshape(5, 1)}
    model = node_model(node, {"x": (6, 200_000)}, consts)
    run(model, {"x": x}, rule="gemm", axis=0)


# ---------------------------------------------------------------------------------------------
# MatMul


def test_matmul_constant_right_batched():
    x = Moments.along(np.linspace(-1, 1, 6), np.linspace(0.3, 2.0, 6), axis=2, rank=3)
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    model = node_model(node, {"x": (20000, 7, 6)}, {"w": weights((6, 5))})
    run(model, {"x": x}, rule="matmul_const", axis=2)


def test_matmul_constant_left():
    x = Moments.along(np.linspace(-1, 1, 6), np.linspace(0.3, 2.0, 6), axis=1, rank=3)
    node = helper.make_node("MatMul", ["w", "x"], ["y"])
    model = node_model(node, {"x": (20000, 6, 7)}, {"w": weights((5, 6))})
    run(model, {"x": x}, rule="matmul_const", axis=1)


def _per_head_input(heads, features):
    """Statistics that differ by head (axis 0) and feature (axis 2) of ``[H, R, K]``."""
    mean = np.linspace(-1, 1, heads * features).reshape(heads, 1, features)
    var = np.linspace(0.3, 2.0, heads * features)[::-1].reshape(heads, 1, features)
    return Moments(mean, var)


@pytest.mark.parametrize("weight_first", [False, True])
def test_matmul_stacked_constant_weights_per_head(weight_first):
    """A block-diagonal layer written as a MatMul with one matrix per head (RecurrentGemma's
    ``[H, R, K] @ W[H, K, N]``, and ``W[H, M, K] @ X[H, K, R]``): each head's outputs sum its
    own inputs through its own matrix, ``Var[y_hn] = sum_k W_hkn^2 nu_hk``. Went to the
    empirical fallback, which pools the heads; now against onnxruntime per head and output."""
    heads, k, n, rows = 3, 5, 4, 20000
    w = weights((heads, k, n)) if not weight_first else weights((heads, n, k))
    if weight_first:
        x = Moments(np.swapaxes(_per_head_input(heads, k).mean, 1, 2),
                    np.swapaxes(_per_head_input(heads, k).var, 1, 2))
        node = helper.make_node("MatMul", ["w", "x"], ["y"])
        model = node_model(node, {"x": (heads, k, rows)}, {"w": w})
        summed_over = 2
    else:
        x = _per_head_input(heads, k)
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        model = node_model(node, {"x": (heads, rows, k)}, {"w": w})
        summed_over = 1
    _, result = predict(model, {"x": x})
    assert result.rules["y"] == "matmul_const", result.fallbacks
    y = monte_carlo(model, {"x": x})["y"].astype(np.float64)
    got_mean, got_var = y.mean(axis=summed_over), y.var(axis=summed_over)
    predicted = result.moments["y"]
    shape = (heads, n, rows) if weight_first else (heads, rows, n)
    mean = np.broadcast_to(predicted.mean, shape).take(0, axis=summed_over)
    var = np.broadcast_to(predicted.var, shape).take(0, axis=summed_over)
    np.testing.assert_allclose(var, got_var, rtol=0.05)
    np.testing.assert_allclose(mean, got_mean, atol=0.05 * np.sqrt(got_var).max())
    assert np.ptp(var) > 0.2 * var.mean()  # the heads and outputs really differ


def test_matmul_stacked_weights_pool_many_rows():
    """Rows whose variances differ (a per-token profile merged with the batch), more output
    cells than are kept: the rows are pooled before the stack (``Var = mean_r nu_r``, the means
    equal), each head's and output's variance still its own against onnxruntime."""
    heads, rows, k, n = 2, 3000, 8, 12
    w = weights((heads, k, n))
    profile = np.linspace(0.2, 3.0, rows).reshape(1, rows, 1)
    x = Moments(np.zeros((1, 1, 1)), profile * np.linspace(0.5, 1.5, heads).reshape(heads, 1, 1))
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    model = node_model(node, {"x": (heads, rows, k)}, {"w": w})
    _, result = predict(model, {"x": x})
    assert result.rules["y"] == "matmul_const", result.fallbacks
    assert result.moments["y"].mean.shape[1] == 1  # pooled: 2 x 3000 x 12 > KEEP_CAP
    y = monte_carlo(model, {"x": x})["y"].astype(np.float64)
    predicted = np.broadcast_to(result.moments["y"].var, (heads, 1, n))[:, 0]
    np.testing.assert_allclose(predicted, y.var(axis=1), rtol=0.06)


def test_matmul_stacked_weights_of_a_vector_keep_the_output_rank():
    """``x[K] @ W[H, K, N]`` is ``[H, N]`` (the vector's axis removed again): the stacked
    rule's statistics would be ``[H, 1, N]``, of a higher rank than the tensor, so the vector
    goes to the fallback."""
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    model = node_model(node, {"x": (6,)}, {"w": weights((3, 6, 4))})
    _, result = predict(model, {"x": Moments.scalar(0.0, 1.0)})
    assert result.rules["y"] != "matmul_const"
    assert result.moments["y"].mean.ndim <= 2


def test_matmul_stacked_weights_broadcast_over_a_batch():
    """``X[B, H, S, K] @ W[H, K, N]``: the stack broadcasts over the batch axis; scalar input
    statistics, so each head's variance is its matrix's column norms."""
    w = weights((2, 6, 3), scale=1.0)
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    model = node_model(node, {"x": (4000, 2, 3, 6)}, {"w": w})
    x = Moments.scalar(0.5, 2.0)
    _, result = predict(model, {"x": x})
    assert result.rules["y"] == "matmul_const", result.fallbacks
    y = monte_carlo(model, {"x": x})["y"].astype(np.float64)
    got = y.var(axis=(0, 2))
    predicted = np.broadcast_to(result.moments["y"].var, (1, 2, 1, 3))[0, :, 0]
    np.testing.assert_allclose(predicted, got, rtol=0.05)
    np.testing.assert_allclose(predicted, 2.0 * (w.astype(np.float64) ** 2).sum(axis=1),
                               rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Conv -> Flatten -> MatMul: the Flatten expansion gives the MatMul per-feature means


def _conv_flatten_matmul(w1, pads, group, size, w2):
    b1 = np.array([2.0, -2.0, 1.0, -1.0], np.float32)  # channels with very different means
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=pads, group=group),
        helper.make_node("Flatten", ["c"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "w2"], ["y"]),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [20000, 4, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(a, n) for n, a in (("w1", w1), ("b1", b1), ("w2", w2))],
    )
    _, result = predict(model, {"x": PC})
    values = monte_carlo(model, {"x": PC})
    assert result.rules["f"] == "reshape" and result.rules["y"] == "matmul_const"
    assert result.moments["f"].tracked_axes() == (1,)
    return result.moments["y"], values["y"]


def _block_weights(features, rng):
    # the features of channel 0 weigh in with one sign, channel 1's with the other: a pooled
    # Flatten (one mean for every feature) misses the output means by the weights' row sums
    w2 = rng.standard_normal((features, 5)).astype(np.float32) * 0.3
    w2[: features // 4] += 1.0
    w2[features // 4 : features // 2] -= 1.0
    return w2


def test_conv_flatten_matmul_per_feature_means():
    # depthwise 1x1: the flattened features are independent, so the MatMul rule is exact and
    # the check isolates the Flatten expansion (per-feature means and variances)
    rng = np.random.default_rng(3)
    w1 = weights((4, 1, 1, 1), scale=1.0)
    predicted, values = _conv_flatten_matmul(w1, [0, 0, 0, 0], 4, 3, _block_weights(36, rng))
    assert_moments_close(predicted, values, axis=1, rtol=0.05)


def test_conv3x3_flatten_matmul_means():
    # a 3x3 conv without padding: every position has its channel's mean, so the output means
    # are exact; the variance is not checked (overlapping windows correlate the features)
    rng = np.random.default_rng(4)
    w1 = weights((4, 4, 3, 3))
    predicted, values = _conv_flatten_matmul(w1, [0, 0, 0, 0], 1, 5, _block_weights(36, rng))
    mean, _ = predicted.values_along(1, 5)
    got = values.astype(np.float64)
    np.testing.assert_allclose(mean, got.mean(axis=0), atol=0.05 * got.std(axis=0).min())


@pytest.mark.parametrize("output_shape", [[10, 10], [9, 9]])
def test_conv_transpose_output_shape(output_shape):
    node = helper.make_node(
        "ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2], output_shape=output_shape
    )
    consts = {"w": weights((4, 6, 3, 3), scale=0.4), "b": bias(6)}
    model = node_model(node, {"x": (2000, 4, 5, 5)}, consts)
    run(model, {"x": PC}, rule="conv_transpose")


def test_padded_conv_per_position_statistics():
    # a padded conv with biases, then ReLU and a second padded conv: border positions see fewer
    # taps (smaller variance, other means); every (channel, position) is checked, y's variance
    # excepted (neighbouring ReLU outputs share inputs, so they are correlated)
    w1, w2 = weights((4, 4, 3, 3), seed=5), weights((3, 4, 3, 3), seed=6)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"], pads=[2, 1, 0, 1], strides=[1, 2]),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [20000, 4, 5, 6])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("c1", "r", "y")],
        [numpy_helper.from_array(a, n) for n, a in (("w1", w1), ("b1", bias(4) * 0.3), ("w2", w2))],
    )
    x = Moments.along([0.2, -0.1, 0.0, 0.3], [1.0, 0.5, 2.0, 1.0], axis=1, rank=4)
    _, result = predict(model, {"x": x})
    values = monte_carlo(model, {"x": x})
    for name in ("c1", "r", "y"):
        m = result.moments[name]
        got = values[name].astype(np.float64)
        assert m.spatial is not None, name  # per channel and position class
        mean, var = dense(m.spatial)
        assert mean.shape == (1, *got.shape[1:]), name
        np.testing.assert_allclose(mean[0], got.mean(axis=0), atol=0.03)
        if name != "y":  # 7%: the largest sampling error of 120 variances from 20000 draws
            np.testing.assert_allclose(var[0], got.var(axis=0), rtol=0.07)
            # the per-channel totals are those of the positions (law of total variance)
            assert_moments_close(m, got, rtol=0.05, axis=1)
    # the borders differ: c1's corner variance is below its centre's
    c1_var = dense(result.moments["c1"].spatial)[1]
    assert np.all(c1_var[0, :, 0, 0] < c1_var[0, :, 2, 2])


def test_trimmed_kernel_is_the_same_convolution():
    """rules.linear.trimmed_kernel: the kernel cut to its non-zero taps' bounding box with the
    begin pads moved by ``lo dil`` gives the same output, ``y(q) = sum_t w_t x(q s - b + t
    dil)`` (zero outside x) evaluated directly, itself checked against PyTorch's float64
    conv2d for the full kernel (strides, dilations, asymmetric pads)."""
    torch = pytest.importorskip("torch")
    from torch.nn import functional as F

    from onnxinit.rules.linear import trimmed_kernel

    rng = np.random.default_rng(3)
    w = np.zeros((3, 2, 5, 4))
    w[:, :, 1:3, 2] = rng.standard_normal((3, 2, 2))
    w[0, 1, 3, 3] = 0.7
    x = rng.standard_normal((2, 2, 11, 9))
    begin, end, strides, dilations = [3, 2], [1, 2], (2, 1), (1, 2)
    out = [(n + b + e - (k - 1) * d - 1) // s + 1
           for n, b, e, k, d, s in zip(x.shape[2:], begin, end, w.shape[2:], dilations, strides)]

    def direct(weight, begins):
        y = np.zeros((2, 3, *out))
        for i, j in np.ndindex(*weight.shape[2:]):
            rows = np.arange(out[0]) * strides[0] - begins[0] + i * dilations[0]
            cols = np.arange(out[1]) * strides[1] - begins[1] + j * dilations[1]
            inside = ((rows >= 0) & (rows < x.shape[2]))[:, None] & (
                (cols >= 0) & (cols < x.shape[3]))[None]
            taken = x[:, :, np.clip(rows, 0, x.shape[2] - 1)][..., np.clip(cols, 0, x.shape[3] - 1)]
            y += np.einsum("oc,nchw->nohw", weight[:, :, i, j], taken * inside)
        return y

    padded = F.pad(torch.from_numpy(x), (begin[1], end[1], begin[0], end[0]))
    full = F.conv2d(padded, torch.from_numpy(w), stride=strides, dilation=dilations).numpy()
    np.testing.assert_allclose(direct(w, begin), full, rtol=1e-12, atol=1e-12)
    t, kernel, begins = trimmed_kernel(w, [5, 4], begin, dilations)
    assert t.shape == (3, 2, 3, 2) and kernel == [3, 2] and begins == [2, -2]
    np.testing.assert_allclose(direct(t, begins), full, rtol=1e-12, atol=1e-12)


def test_centre_tap_conv_has_no_border_classes():
    """A padded 3x3 Conv whose only non-zero taps are the centre reads no padding: its output
    is one position class (before: a border ring per axis, whose later sums fell back to
    another law than the interior's), with the input's moments, against onnxruntime."""
    w = np.zeros((4, 4, 3, 3), np.float32)
    w[np.arange(4), (np.arange(4) + 1) % 4, 1, 1] = [1.0, -0.5, 2.0, 0.3]
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], strides=[2, 2])
    model = node_model(node, {"x": (2000, 4, 7, 7)}, {"w": w})
    m = run(model, {"x": PC}, rule="conv")
    assert m.spatial is None or all(int(k.max()) == 0 for k in m.spatial.maps)


def test_per_position_conv_uniform_output_stays_per_channel():
    # no padding and uniform input statistics: the positions do not differ
    node = helper.make_node("Conv", ["x", "w"], ["y"])
    model = node_model(node, {"x": (2000, 4, 6, 6)}, {"w": weights((8, 4, 3, 3))})
    m = run(model, {"x": PC}, rule="conv")
    assert m.tracked_axes() == (1,)


def test_padded_conv_flatten_matmul_means():
    # padded depthwise 3x3 Conv -> Flatten -> MatMul: each flattened feature carries its
    # position's mean (a border position sums fewer taps), so the output means are exact; the
    # variance is not checked (overlapping windows correlate the features)
    rng = np.random.default_rng(7)
    w1 = weights((4, 1, 3, 3), scale=0.5)
    predicted, values = _conv_flatten_matmul_pos(w1, rng)
    mean, _ = predicted.values_along(1, 5)
    got = values.astype(np.float64)
    np.testing.assert_allclose(mean, got.mean(axis=0), atol=0.05 * got.std(axis=0).min())


def _conv_flatten_matmul_pos(w1, rng):
    b1 = np.array([2.0, -2.0, 1.0, -1.0], np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1], group=4),
        helper.make_node("Flatten", ["c"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "w2"], ["y"]),
    ]
    w2 = _block_weights(36, rng)
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [20000, 4, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(a, n) for n, a in (("w1", w1), ("b1", b1), ("w2", w2))],
    )
    _, result = predict(model, {"x": PC})
    values = monte_carlo(model, {"x": PC})
    assert result.moments["f"].tracked_axes() == (1,)
    assert result.moments["f"].mean.shape == (1, 36)  # channel x position
    return result.moments["y"], values["y"]


def test_copy_conv_keeps_the_distribution_of_a_relu_output():
    # a Dirac kernel (one non-zero per output channel: IDInit's identity) copies a ReLU
    # output, padding included: the ReLU after it changes nothing. A Gaussian description of
    # the copy would lose ~40% of the variance at that ReLU.
    w = np.zeros((6, 3, 3, 3), np.float32)
    for j in range(6):
        w[j, j % 3, 1, 1] = 1.5 if j < 3 else 0.5
    w[5, 2, 1, 1], w[5, 2, 0, 0] = 0.0, 0.5  # a shifted copy reads the zero padding
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["y"]),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [20000, 3, 5, 5])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("c2", "y")],
        [numpy_helper.from_array(a, n) for n, a in (("w1", weights((3, 3, 3, 3), seed=3)),
                                                      ("w2", w))],
    )
    x = Moments.along([0.2, -0.1, 0.0], [1.0, 0.5, 2.0], axis=1, rank=4)
    _, result = predict(model, {"x": x})
    values = monte_carlo(model, {"x": x})
    for name in ("c2", "y"):
        assert_moments_close(result.moments[name], values[name], rtol=0.03, axis=1)
    assert result.moments["c2"].spatial.cells.source is not None  # the copied description


def test_weighted_sums_of_repeated_and_stacked_rows():
    """``(mu @ W, nu @ W**2)`` for statistics given per row of a stack, equal rows (a view of
    zero strides, as statistics broadcast along the tokens are) or not, in blocks or whole,
    against the sums written out in float64 row by row."""
    from onnxinit.rules.weighted import weighted_sums

    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 5)).astype(np.float32)
    w64 = w.astype(np.float64)
    row = rng.normal(size=6)
    repeated = np.broadcast_to(row, (4, 1, 6))
    distinct = rng.uniform(0.5, 2.0, size=(4, 1, 6))
    for mu, nu in [(repeated, distinct), (distinct, repeated), (repeated, repeated),
                   (row, distinct)]:
        for block in (8, 1 << 20):  # one weight row per block, or the whole weight at once
            mean, var = weighted_sums(mu, nu, w, block_bytes=block)
            assert mean.shape == np.shape(mu)[:-1] + (5,)
            assert var.shape == np.shape(nu)[:-1] + (5,)
            want_mean = np.array([[sum(m[i] * w64[i, j] for i in range(6)) for j in range(5)]
                                  for m in np.reshape(mu, (-1, 6))])
            want_var = np.array([[sum(v[i] * w64[i, j] ** 2 for i in range(6)) for j in range(5)]
                                 for v in np.reshape(nu, (-1, 6))])
            np.testing.assert_allclose(mean.reshape(-1, 5), want_mean, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(var.reshape(-1, 5), want_var, rtol=1e-12, atol=1e-12)
            mean[...] = 0.0  # a writable array of its own, not a view of another


def test_trimmed_kernel_bounding_box_in_one_and_three_dimensions():
    """rules.linear.trimmed_kernel on 1-D and 3-D kernels: the kernel cut to the bounding box
    of the taps some channel pair reads (found here tap by tap), the begin pads moved by ``lo
    dil``; a NaN tap counts as not read, as ``abs(w) > 0`` says."""
    from onnxinit.rules.linear import trimmed_kernel

    rng = np.random.default_rng(5)
    for shape, dil in (((2, 3, 7), [2]), ((2, 1, 4, 5, 6), [1, 3, 2])):
        for _ in range(20):
            w = rng.standard_normal(shape) * (rng.random(shape) < 0.1)
            if rng.random() < 0.3:
                w[(0, 0) + tuple(rng.integers(0, k) for k in shape[2:])] = np.nan
            read = np.array([bool((np.abs(w[(slice(None), slice(None)) + t]) > 0).any())
                             for t in np.ndindex(*shape[2:])]).reshape(shape[2:])
            begins = list(rng.integers(0, 4, len(shape) - 2))
            t, kernel, new_begins = trimmed_kernel(w, list(shape[2:]), begins, dil)
            if not read.any():
                assert t is w and kernel == list(shape[2:]) and new_begins == begins
                continue
            box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(read))
            np.testing.assert_array_equal(t, w[(slice(None), slice(None)) + box])
            assert kernel == [s.stop - s.start for s in box]
            assert new_begins == [b - s.start * d for b, s, d in zip(begins, box, dil)]
