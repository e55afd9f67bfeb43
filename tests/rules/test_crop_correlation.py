"""A crop (Slice of spatial axes) of a correlated map keeps the correlation of the positions it
keeps (``onnxinit/crop_correlation.py``). Before, the Slice dropped it, and the global pool
after the next Conv read a nearest-upsampled map's copies as independent positions (0.85x).
Against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments

from ..oracle import monte_carlo, predict

N, C, S = 512, 8, 6


def _model(steps) -> onnx.ModelProto:
    rng = np.random.default_rng(5)
    w1 = (rng.standard_normal((C, 3, 3, 3)) * np.sqrt(2 / 27)).astype(np.float32)
    w2 = (rng.standard_normal((C, C, 3, 3)) * np.sqrt(2 / (9 * C))).astype(np.float32)
    slice_inputs = ["up", "st", "en", "ax"] + (["steps"] if steps else [])
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Resize", ["r1", "", "sc"], ["up"], mode="nearest",
                              coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
             helper.make_node("Slice", slice_inputs, ["crop"]),
             helper.make_node("Conv", ["crop", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["pool"])]
    graph = helper.make_graph(
        nodes, "crop", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, 3, S, S])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("crop", "pool")],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
         numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc"),
         numpy_helper.from_array(np.array([2, 1], np.int64), "st"),
         numpy_helper.from_array(np.array([-2, -3], np.int64), "en"),
         numpy_helper.from_array(np.array([2, 3], np.int64), "ax"),
         numpy_helper.from_array(np.array([1, 1], np.int64), "steps")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.mark.parametrize("steps", [False, True])
def test_pool_after_a_crop_of_an_upsampled_map(steps):
    model = _model(steps)
    x = {"x": Moments(np.float64(0.0), np.float64(1.0))}
    _, result = predict(model, x)
    values = monte_carlo(model, x)
    for name in ("crop", "pool"):
        ratio = result.moments[name].total()[1] / values[name].astype(np.float64).var()
        assert abs(ratio - 1) < 0.06, (name, ratio)
