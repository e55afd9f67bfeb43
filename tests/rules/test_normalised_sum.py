"""The mean square of a normalised row plus a small independent one (Gemma 2's stream after
its first layer: the scaled embedding plus the post-attention norm's output, 97.5% of the
variance; rules/shared_row_pairs.mean_square_diagonal), against onnxruntime on Gaussian rows.
The normalised part's energy is constant, so the mean square's variance is the small remainder
``2 q + excess`` of a cancellation; the Pairs' mean over pairs of the squares left the
excess's diagonal share out (``excess mean(sigma^4) / D``, as large as the remainder)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.oracle import monte_carlo, predict

N, D = 16384, 64


def _model(small: float) -> onnx.ModelProto:
    f32 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    nodes = [
        helper.make_node("Pow", ["x", "two"], ["sq0"]),
        helper.make_node("ReduceMean", ["sq0", "axes"], ["ms0"], keepdims=1),
        helper.make_node("Add", ["ms0", "eps"], ["mse0"]),
        helper.make_node("Sqrt", ["mse0"], ["rms0"]),
        helper.make_node("Div", ["x", "rms0"], ["n"]),
        helper.make_node("Mul", ["e", "scale"], ["a"]),
        helper.make_node("Add", ["n", "a"], ["h"]),
        helper.make_node("Pow", ["h", "two"], ["sq"]),
        helper.make_node("ReduceMean", ["sq", "axes"], ["ms"], keepdims=1),
    ]
    graph = helper.make_graph(
        nodes, "normalised_sum",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [N, D]) for n in ("x", "e")],
        [helper.make_tensor_value_info("ms", TensorProto.FLOAT, None)],
        [f32("two", 2.0), f32("eps", 1e-6), f32("scale", small),
         numpy_helper.from_array(np.array([-1], np.int64), "axes")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def test_mean_square_of_a_normalised_row_plus_a_small_one():
    """A normalised row plus an independent one of 2.5% of its variance: the mean square's
    variance 1.36x before, within 10% now."""
    model = _model(0.16)
    inputs = {"x": Moments.scalar(0.0, 1.0), "e": Moments.scalar(0.0, 1.0)}
    _, result = predict(model, inputs)
    values = monte_carlo(model, inputs)
    got = float(np.var(values["ms"].astype(np.float64)))
    ratio = result.moments["ms"].total()[1] / got
    assert abs(ratio - 1) < 0.10, ratio
