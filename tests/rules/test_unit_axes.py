"""tf2onnx's Keras SeparableConv1D + ReLU + AveragePooling1D / MaxPooling1D: the two Convs on
``[N, C, 1, T]``, a Squeeze to ``[N, C, T]``, the ReLU, an Unsqueeze back and a 2-D pool of
kernel ``[1, 2]``. The Squeeze and Unsqueeze only drop and insert the unit axis, so the
neighbouring positions' correlation (a kernel of 5 shares 4 taps) must reach the pool: dropped
at the Squeeze, the average of two neighbours read 0.87x of onnxruntime's variance. Against
onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.models import make_model
from tests.oracle import assert_moments_close, monte_carlo, predict


@pytest.mark.parametrize("pool", ["AveragePool", "MaxPool"])
def test_pool_of_a_squeezed_separable_conv1d_keeps_its_correlation(pool):
    b, c, t, k = 64, 16, 32, 5
    rng = np.random.default_rng(0)
    consts = {"ax2": np.array([2]), "wd": rng.standard_normal((c, 1, 1, k)) / np.sqrt(k),
              "wp": rng.standard_normal((2 * c, c, 1, 1)) / np.sqrt(c)}
    nodes = [helper.make_node("Unsqueeze", ["x", "ax2"], ["xe"]),
             helper.make_node("Conv", ["xe", "wd"], ["d4"], group=c, pads=[0, k // 2, 0, k // 2]),
             helper.make_node("Conv", ["d4", "wp"], ["c4"]),
             helper.make_node("Squeeze", ["c4", "ax2"], ["s"]),
             helper.make_node("Relu", ["s"], ["r"]),
             helper.make_node("Unsqueeze", ["r", "ax2"], ["u"]),
             helper.make_node(pool, ["u"], ["y"], kernel_shape=[1, 2], strides=[1, 2])]
    model = make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, c, t])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v.astype(np.int64 if n == "ax2" else np.float32), n)
         for n, v in consts.items()])
    x = Moments.scalar(0.0, 1.0)
    _, result = predict(model, {"x": x})
    samples = np.concatenate([monte_carlo(model, {"x": x}, seed=s)["y"] for s in range(4)])
    assert_moments_close(result.moments["y"], samples, rtol=0.03)
