"""The cross-channel field through dense convolutions (rules/field_kernels.py): a stem of 3
channels to 16 correlates every pair of its output channels at the offsets its kernel spans, so
the next 1x1 convolution's channels have correlations whose cross terms are as large as their
diagonal ones; a depthwise convolution reads each channel's own correlation, and a wide 1x1
reduction (over the field's budget) each pair's covariance at offset 0. Each channel's variance
against onnxruntime (MobileViT's first block, where BatchNorm in its eps regime passes every
channel's variance on by its own gamma)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxinit import cross_channel
from onnxinit.moments import Moments
from onnxinit.rules.field_kernels import dense_kernel, dense_covariance
from tests.models import make_model
from tests.oracle import monte_carlo, per_channel, predict

N, S = 256, 16  # samples, map side


def _model():
    rng = np.random.default_rng(3)
    inits = []

    def weight(name, shape):
        fan_in = int(np.prod(shape[1:]))
        inits.append(numpy_helper.from_array(
            (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name))
        return name

    nodes = [
        helper.make_node("Conv", ["x", weight("w0", (16, 3, 3, 3))], ["stem"], pads=[1] * 4),
        helper.make_node("Conv", ["stem", weight("w1", (64, 16, 1, 1))], ["expand"]),
        helper.make_node("Conv", ["expand", weight("w2", (64, 1, 3, 3))], ["depthwise"],
                         pads=[1] * 4, group=64),
        helper.make_node("Conv", ["depthwise", weight("w3", (32, 64, 1, 1))], ["reduce"]),
    ]
    outputs = ["expand", "depthwise", "reduce"]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                            [N, 3, S, S])],
                      [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                       for n in outputs], inits, opset=13)


def test_each_channels_variance_after_a_dense_stem():
    model = _model()
    x = Moments.scalar(0.0, 1.0)
    _, result = predict(model, {"x": x})
    out = monte_carlo(model, {"x": x})
    for name, rtol in (("expand", 0.1), ("depthwise", 0.1), ("reduce", 0.1)):
        _, measured = per_channel(out[name])
        m = result.moments[name]
        predicted = np.broadcast_to(m.values_along(1, measured.size)[1], measured.shape)
        # before: the depthwise channels 0.74-1.78x (the expansion's correlations without
        # their cross terms), the reduction's 0.61-1.44x (pair covariances left out)
        np.testing.assert_allclose(predicted, measured, rtol=rtol, err_msg=name)


def test_the_dense_transfer_is_the_gathered_one():
    # matrix products per tap against the gather per non-zero (cross_channel.conv_covariance)
    rng = np.random.default_rng(0)
    for c_in, c_out, k, s, d, r in [(3, 16, 3, 2, 1, 6), (16, 24, 1, 1, 1, 6),
                                    (8, 12, 3, 1, 2, 3), (5, 7, 4, 4, 1, 2)]:
        field = rng.standard_normal((c_in, c_in, 2 * r + 1, 2 * r + 1)) * 0.1
        field = field + np.flip(np.swapaxes(field, 0, 1), axis=(2, 3))
        nu = rng.uniform(0.5, 2.0, c_in)
        w = rng.standard_normal((c_out, c_in, k, k))
        gathered = cross_channel.conv_covariance(field, nu, dense_kernel(w, 1), [s, s], [d, d],
                                                 [r, r])
        np.testing.assert_allclose(dense_covariance(field, nu, w, [s, s], [d, d], [r, r]),
                                   gathered, rtol=0, atol=1e-5 * np.abs(gathered).max())
