"""Kernel layouts, dropped zero biases and refusal messages of the weights mapping, framework-free:
channels-last kernels are checked against a numpy convolution written from the definition and
onnxruntime on the rescaled model."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.rescale import rescale
from onnxinit.weights import MappingError, load_plan, map_weights, weight_source
from onnxinit.weights.layouts import layouts

from .models import make_model

RNG = np.random.default_rng(7)


def _conv_model(weights: list[tuple[np.ndarray, int]], shape):
    """NCHW input, Conv (valid padding, stride 1) with each (ONNX weight, group), ReLU between."""
    nodes, inits, x = [], [], "x"
    for i, (w, group) in enumerate(weights):
        inits.append(numpy_helper.from_array(w.astype(np.float32), f"const_fold_{i}"))
        nodes.append(helper.make_node("Conv", [x, f"const_fold_{i}"], [f"c{i}"], group=group))
        x = f"c{i}"
        if i + 1 < len(weights):
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                      [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)


def _nhwc_conv(x, kernel):
    """Keras Conv2D, valid padding: out[n, y, x, o] = sum x[n, y+dy, x+dx, i] K[dy, dx, i, o]."""
    kh, kw = kernel.shape[:2]
    h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    out = 0
    for dy in range(kh):
        for dx in range(kw):
            out = out + np.einsum("nyxi,io->nyxo", x[:, dy:dy + h, dx:dx + w], kernel[dy, dx])
    return out


def _nhwc_depthwise(x, kernel):
    """Keras DepthwiseConv2D: out[..., i*m + j] = sum x[n, y+dy, x+dx, i] K[dy, dx, i, j]."""
    kh, kw, c, m = kernel.shape
    h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    out = 0
    for dy in range(kh):
        for dx in range(kw):
            out = out + np.einsum("nyxi,ij->nyxij", x[:, dy:dy + h, dx:dx + w], kernel[dy, dx])
    return out.reshape(*out.shape[:3], c * m)


def test_channels_last_kernels_load_and_compute_what_onnxruntime_computes(tmp_path):
    conv = RNG.standard_normal((3, 3, 4, 6)) * 0.3       # Keras [kH, kW, in, out]
    depthwise = RNG.standard_normal((3, 3, 6, 2)) * 0.3  # Keras [kH, kW, in, multiplier]
    params = {"conv2d/kernel": conv.astype(np.float32),
              "depthwise_conv2d/depthwise_kernel": depthwise.astype(np.float32)}
    onnx_conv = conv.transpose(3, 2, 0, 1)                            # [out, in, kH, kW]
    onnx_depthwise = depthwise.reshape(3, 3, 12).transpose(2, 0, 1)[:, None]  # [12, 1, 3, 3]
    original = tmp_path / "m.onnx"
    onnx.save(_conv_model([(onnx_conv, 1), (onnx_depthwise, 6)], [2, 4, 9, 9]), original)
    rescaled = rescale(original, "autoinit", output=tmp_path / "m.r.onnx").output

    source = weight_source(rescaled, original)
    report = map_weights(source, params)
    assert report.layout == {"const_fold_0": "channels-last kernel",
                             "const_fold_1": "channels-last depthwise kernel"}
    assert report.transposed == ["const_fold_0", "const_fold_1"]
    values = load_plan(report, source, params)
    x = RNG.standard_normal((2, 9, 9, 4)).astype(np.float32)
    ours = _nhwc_depthwise(np.maximum(_nhwc_conv(x, values["conv2d/kernel"]), 0),
                           values["depthwise_conv2d/depthwise_kernel"])
    session = ort.InferenceSession(str(rescaled), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": x.transpose(0, 3, 1, 2)})[0].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert not np.allclose(values["conv2d/kernel"], conv, rtol=1e-3)  # the rescale changed it


def test_layouts_of_conv1d_written_as_2d_and_of_a_transposed_conv():
    # tf2onnx writes a Conv1D kernel [k, in, out] as a 2-D Conv weight [out, in, 1, k]
    names = [layout.name for layout in layouts((5, 4, 1, 3), (3, 4, 5))]
    assert names == ["channels-last kernel"]
    kernel = RNG.standard_normal((3, 4, 5))
    layout = layouts((5, 4, 1, 3), (3, 4, 5))[0]
    onnx_value = kernel.transpose(2, 1, 0)[:, :, None, :]
    np.testing.assert_array_equal(layout.to_param(onnx_value), kernel)
    np.testing.assert_array_equal(layout.to_onnx(kernel, onnx_value.shape), onnx_value)
    # Conv2DTranspose: Keras [kH, kW, out, in], ONNX ConvTranspose [in, out, kH, kW]
    assert [x.name for x in layouts((5, 3, 2, 2), (2, 2, 3, 5))] == ["channels-last kernel"]
    assert layouts((5, 3, 2, 2), (2, 2, 5, 3)) == []


def test_dropped_zero_biases_are_absent_not_missing_and_a_refusal_names_causes():
    kernel = RNG.standard_normal((4, 3)).astype(np.float32)
    params = {"dense/kernel": kernel, "dense/bias": np.zeros(3, np.float32),
              "other/kernel": RNG.standard_normal((3, 2)).astype(np.float32),
              "other/bias": np.ones(2, np.float32)}
    report = map_weights({"MatMul/ReadVariableOp:0": kernel}, params)
    assert report.absent == ["dense/bias"]  # zero, and its layer's kernel was found
    assert report.missing == ["other/kernel", "other/bias"]

    unrelated = {"w": RNG.standard_normal((4, 3)).astype(np.float32),
                 "v": RNG.standard_normal((5, 5)).astype(np.float32)}
    source = weight_source(unrelated)
    report = map_weights(source, params)
    with pytest.raises(MappingError, match="most likely causes") as info:
        load_plan(report, source, params)
    message = str(info.value)
    assert "w [4, 3]" in message and "other/kernel [3, 2]" in message
    assert "(1)" in message and "(2)" in message and "(3)" in message
