"""The cross-channel correlation field (onnxinit.cross_channel) against onnxruntime: a chain of
sparse, structured convolutions (IDInit's patch identity, a same-sign sparse kernel, a
+-pattern with stride 2) on white noise, whose channels are shifted sums of the same pixels.
The sample covariance of interior positions is the oracle; the per-channel model alone (no
cross terms) misses these variances by up to 25%."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxinit.graph import load
from onnxinit.methods.idinit import padded_identity
from onnxinit.moments import Moments
from onnxinit.rules import support

from .models import make_model
from .oracle import assert_moments_close, monte_carlo, predict

SIZE = 22


def _sparse(c_out, c_in, rng, per_row, signs):
    w = np.zeros((c_out, c_in * 9))
    for j in range(c_out):
        cols = rng.choice(c_in * 9, per_row, replace=False)
        w[j, cols] = rng.uniform(0.5, 1.0, per_row) * (signs if signs is not None else 1.0)
    return w.reshape(c_out, c_in, 3, 3)


def _chain():
    rng = np.random.default_rng(3)
    wa = padded_identity(8, 27).reshape(8, 3, 3, 3)  # each channel: 3-4 pixels of x
    wb = _sparse(8, 8, rng, 4, None)  # same-sign sums of the ReLU outputs
    wc = _sparse(6, 8, rng, 4, np.array([1.0, -1.0, 1.0, -1.0]))
    inits = [numpy_helper.from_array(w.astype(np.float32), n)
             for n, w in (("wa", wa), ("wb", wb), ("wc", wc))]
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ra"]),
        helper.make_node("Conv", ["ra", "wb"], ["b"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["b"], ["rb"]),
        helper.make_node("Conv", ["rb", "wc"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    outs = ["a", "ra", "b", "rb", "c", "y"]
    batch = 3000
    model = make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs], inits)
    moments = {"x": Moments.scalar(0.0, 1.0)}
    _, result = predict(model, moments)
    return result, monte_carlo(model, moments, seed=1)


def _sample_field(values, margin, radius):
    """Corr(v_c(p), v_c'(p + d)) over interior positions p, ``[C, C, 2r+1, 2r+1]``."""
    v = values.astype(np.float64)
    v = v - v.mean(axis=0, keepdims=True)  # each position's own mean (the border's differ)
    n = v.shape[2]
    inner = slice(margin + radius, n - margin - radius)
    centre = v[:, :, inner, inner]
    sd = np.sqrt((centre**2).mean(axis=(0, 2, 3)))
    out = np.zeros((v.shape[1], v.shape[1], 2 * radius + 1, 2 * radius + 1))
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            shifted = v[:, :, margin + radius + dy:n - margin - radius + dy,
                        margin + radius + dx:n - margin - radius + dx]
            cov = np.einsum("nchw,ndhw->cd", centre, shifted) / (centre[:, 0].size)
            out[:, :, dy + radius, dx + radius] = cov / np.outer(sd, sd)
    return out


def test_field_of_a_structured_conv_chain_matches_onnxruntime():
    result, values = _chain()
    for name, margin, r in (("ra", 1, 2), ("rb", 2, 2), ("c", 2, 2)):
        cross = result.moments[name].spatial.corr.cross
        assert cross is not None, name
        got = _sample_field(values[name], margin, r)
        centre = cross.radius
        predicted = cross.corr[:, :, centre[0] - r:centre[0] + r + 1,
                               centre[1] - r:centre[1] + r + 1]
        assert np.abs(got).max() > 0.3  # strongly correlated channels
        np.testing.assert_allclose(predicted, got, atol=0.04, err_msg=name)


def test_variances_of_the_chain_match_onnxruntime():
    result, values = _chain()
    for name in ("a", "ra", "b", "rb", "c"):
        assert_moments_close(result.moments[name], values[name], rtol=0.05, axis=1)
    # y = Relu(c), c a +- sum of four non-negative sums: not Gaussian, which the ReLU rule
    # assumes (the field is right, the one-dimensional law is not): 0.85-0.95 of the measured
    # variance per channel.


def test_relu_of_a_same_sign_sum_of_relus_is_its_input():
    result, values = _chain()
    np.testing.assert_array_equal(values["rb"], values["b"])  # the oracle: nothing clipped
    assert result.moments["rb"] is result.moments["b"]


def test_nonnegative_reads_signs_from_the_graph():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 3, 1, 1)).astype(np.float32)  # 3 -> 3: the Add is valid ONNX
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Conv", ["r", "wp"], ["pos"]),
             helper.make_node("Conv", ["r", "wm"], ["mixed"]),
             helper.make_node("Add", ["pos", "x"], ["s"])]
    inits = [numpy_helper.from_array(np.abs(w), "wp"), numpy_helper.from_array(w, "wm")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             [2, 3, 5, 5])],
                       [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                        for o in ("pos", "mixed", "s")], inits)
    graph = load(model)
    assert support.nonnegative(graph, "r") and support.nonnegative(graph, "pos")
    assert not support.nonnegative(graph, "mixed")
    assert not support.nonnegative(graph, "s") and not support.nonnegative(graph, "x")


def test_dense_random_conv_over_the_budget_creates_no_field():
    """A dense conv carries the field only where it is narrow (rules/field_kernels.py: a stem
    of 3 channels to 8 does, checked against onnxruntime in tests/rules/test_dense_fields.py);
    128 output channels at 169 offsets are over DENSE_FIELD_BUDGET: no field, as before."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((128, 3, 3, 3)) / np.sqrt(27)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             [2, 3, 8, 8])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                       [numpy_helper.from_array(w, "w")])
    _, result = predict(model, {"x": Moments.scalar(0.0, 1.0)})
    assert result.moments["y"].spatial.corr.cross is None


def _block(projection: bool):
    """x -> patch-identity conv -> Relu -> r; branch: sparse conv (same sign) -> Relu -> sparse conv (+-, scaled to
    matter); skip: r itself or a 1x1 stride-2 copy of it; y = skip + branch, z = Relu(y)."""
    rng = np.random.default_rng(5)
    c = 6
    stride = 2 if projection else 1
    wb1 = _sparse(c, c, rng, 3, None)
    wb2 = _sparse(c, c, rng, 4, np.array([1.0, -1.0, 1.0, 0.5]))
    for w in (wb1, wb2):  # each channel also reads itself at the centre tap
        w[np.arange(c), np.arange(c), 1, 1] = 1.0
    stem = padded_identity(c, 3 * 9).reshape(c, 3, 3, 3)
    inits = [numpy_helper.from_array(w.astype(np.float32), n)
             for n, w in (("w1", wb1), ("w2", wb2), ("w0", stem))]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w1"], ["h"], pads=[1, 1, 1, 1], strides=[stride] * 2),
             helper.make_node("Relu", ["h"], ["rh"]),
             helper.make_node("Conv", ["rh", "w2"], ["b"], pads=[1, 1, 1, 1])]
    skip = "r"
    if projection:
        wp = np.zeros((c, c, 1, 1))
        wp[np.arange(c), np.arange(c)] = 1.0
        inits.append(numpy_helper.from_array(wp.astype(np.float32), "wp"))
        nodes.append(helper.make_node("Conv", ["r", "wp"], ["s"], strides=[2, 2]))
        skip = "s"
    nodes += [helper.make_node("Add", [skip, "b"], ["y"]), helper.make_node("Relu", ["y"], ["z"])]
    model = make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3000, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("b", "y", "z")],
        inits)
    moments = {"x": Moments.scalar(0.0, 1.0)}
    _, result = predict(model, moments)
    return result, monte_carlo(model, moments, seed=2)


def test_residual_sum_of_correlated_skip_and_branch_matches_onnxruntime():
    for projection in (False, True):
        result, values = _block(projection)
        skip = values["y"] - values["b"]
        b = values["b"].astype(np.float64)
        cov = ((skip - skip.mean(axis=0)) * (b - b.mean(axis=0))).mean()
        assert 2 * cov > 0.1 * values["y"].var()  # what an independent sum would leave out
        assert_moments_close(result.moments["y"], values["y"], rtol=0.05, axis=1)
        cross = result.moments["y"].spatial.corr.cross
        r, centre = 2, cross.radius
        got = _sample_field(values["y"], 2, r)
        predicted = cross.corr[:, :, centre[0] - r:centre[0] + r + 1,
                               centre[1] - r:centre[1] + r + 1]
        np.testing.assert_allclose(predicted, got, atol=0.05, err_msg=str(projection))
