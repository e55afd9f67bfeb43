"""GlobalMaxPool and ReduceMax / ReduceMin over the spatial axes of a padded Conv's map, per
position class (``onnxinit.rules.global_maxima``), against onnxruntime Monte Carlo runs."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.models import make_model
from tests.oracle import check_rule


def _padded_conv_relu(tail, shape, seed=5, channels=6):
    """Conv(3x3, pad 1, 16 -> ``channels``, bias) -> ReLU -> ``tail`` reading "r", output "y":
    the border rows and columns read fewer taps, so other means and variances."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((channels, shape[1], 3, 3)) * 0.3
    b = rng.uniform(-0.5, 0.5, channels)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"])] + tail
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w.astype(np.float32), "w"),
         numpy_helper.from_array(b.astype(np.float32), "b"),
         numpy_helper.from_array(np.array([2, 3], np.int64), "axes")],
    )


_X = Moments.along(np.random.default_rng(6).uniform(0.3, 0.9, 16),
                   np.random.default_rng(7).uniform(0.5, 2.0, 16), axis=1, rank=4)


@pytest.mark.parametrize("tail", [
    [helper.make_node("GlobalMaxPool", ["r"], ["y"])],
    [helper.make_node("ReduceMax", ["r", "axes"], ["y"], keepdims=0)],
    [helper.make_node("ReduceMin", ["c", "axes"], ["y"], keepdims=1)],
])  # fmt: skip
def test_global_maximum_of_a_padded_map_per_position_class(tail):
    # a 5x5 map: 16 of its 25 positions on the border, whose Gaussians are narrower and
    # shifted (the input's positive mean, fewer taps; the minimum: of the Conv itself). K draws
    # of the channel's pooled Gaussian gave 0.79-0.99x of the measured variance per channel
    # (ReduceMin 0.76-1.04x); each class's own Gaussians 0.97-1.03x (0.99-1.01x)
    model = _padded_conv_relu(tail, (20000, 16, 5, 5))
    check_rule(model, {"x": _X}, rtol=0.05)


def test_max_over_time_of_a_padded_conv1d():
    # a text CNN's Conv1d (pad 1) -> ReLU -> max over time, as torch's amax(dim=2), 10 steps
    # to 4, the first and last reading the padding. Stride 3: the windows do not overlap, so
    # the steps are independent (a stride-1 Conv1d's neighbours correlate at -0.09 to 0.07 on
    # these weights; the common factor takes a negative r as 0, and 2 of 8 channels are then
    # 6-7% high). The pooled Gaussian gave 0.94-1.14x, per class 0.99-1.02x
    rng = np.random.default_rng(8)
    w = rng.standard_normal((8, 16, 3)) * 0.3
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1], strides=[3]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("ReduceMax", ["r", "axes"], ["y"], keepdims=0)]
    model = make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [20000, 16, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w.astype(np.float32), "w"),
         numpy_helper.from_array(np.array([2], np.int64), "axes")])
    x = Moments.along(np.full(16, 0.6), np.full(16, 1.0), axis=1, rank=3)
    check_rule(model, {"x": x}, rtol=0.05)
