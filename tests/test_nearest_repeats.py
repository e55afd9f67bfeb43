"""TensorFlow's repeat (Keras' UpSampling2D: ``Unsqueeze -> Tile -> [Transpose] -> Reshape``
per axis, tf2onnx leaving the second on NHWC) and a crop (Cropping2D: a Slice on NHWC) before
the next Conv read as nearest Resizes and a Slice on the NCHW map
(``onnxinit/passes/repeats.py``): a zero-padded conv's border rows keep their lower variance
through the copies, and the crop of the interior reads the interior. Before, Tile, Reshape and
Transpose dropped the position classes and the crop read the whole map's average (0.93x, the
Conv after it 0.88x in the Keras export). A crop of a map keeps its spatial correlation
(``onnxinit/crop_correlation.py``: the pool after the next Conv read its positions as
independent, 0.85x, with or without the repeats). Against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxinit.graph import load
from onnxinit.moments import Moments

from .oracle import monte_carlo, predict

N, C, S = 512, 8, 6


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(5)
    w1 = (rng.standard_normal((C, 3, 3, 3)) * np.sqrt(2 / 27)).astype(np.float32)
    w2 = (rng.standard_normal((C, C, 3, 3)) * np.sqrt(2 / (9 * C))).astype(np.float32)
    ints = lambda name, v: numpy_helper.from_array(np.asarray(v, np.int64), name)  # noqa: E731
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        # repeat H on the NCHW map, transposed to NHWC on the way
        helper.make_node("Unsqueeze", ["r1", "ax3"], ["u1"]),
        helper.make_node("Tile", ["u1", "reps"], ["t1"]),
        helper.make_node("Transpose", ["t1"], ["p1"], perm=[0, 2, 3, 4, 1]),
        helper.make_node("Reshape", ["p1", "shape1"], ["up_h"]),
        # repeat W on NHWC
        helper.make_node("Unsqueeze", ["up_h", "ax3"], ["u2"]),
        helper.make_node("Tile", ["u2", "reps"], ["t2"]),
        helper.make_node("Reshape", ["t2", "shape2"], ["up"]),
        # crop 2 rows and 2 columns from each side (the padded conv's border copies), NCHW
        helper.make_node("Slice", ["up", "starts", "ends", "axes"], ["crop"]),
        helper.make_node("Transpose", ["crop"], ["crop_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["crop_nchw", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["pool"]),
    ]
    crop = 2 * S - 4
    graph = helper.make_graph(
        nodes, "repeats", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, 3, S, S])],
        [helper.make_tensor_value_info("pool", TensorProto.FLOAT, [N, C, 1, 1]),
         helper.make_tensor_value_info("crop_nchw", TensorProto.FLOAT, [N, C, crop, crop]),
         helper.make_tensor_value_info("c2", TensorProto.FLOAT, [N, C, crop, crop])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
         ints("ax3", [3]), ints("reps", [1, 1, 1, 2, 1]), ints("shape1", [N, 2 * S, S, C]),
         ints("shape2", [N, 2 * S, 2 * S, C]), ints("starts", [2, 2]),
         ints("ends", [-2, -2]), ints("axes", [1, 2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_the_view_computes_the_same_values():
    """The rewritten view (Resizes, the Slice on NCHW) gives the model's own values."""
    model = _model()
    view = load(model).model
    assert [n.op_type for n in view.graph.node].count("Resize") == 2
    x = {"x": Moments(np.float64(0.0), np.float64(1.0))}
    a, b = monte_carlo(model, x), monte_carlo(view, x)
    for name in ("crop_nchw", "c2", "pool"):
        np.testing.assert_array_equal(a[name], b[name])


def test_a_crop_of_a_repeated_map_reads_its_interior():
    model = _model()
    x = {"x": Moments(np.float64(0.0), np.float64(1.0))}
    _, result = predict(model, x)
    values = monte_carlo(model, x)
    for name in ("crop_nchw", "c2", "pool"):
        v = values[name].astype(np.float64)
        ratio = result.moments[name].total()[1] / v.var()
        assert abs(ratio - 1) < 0.05, (name, ratio)
