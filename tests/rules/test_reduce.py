"""Reduction rules (Reduce* over given axes) against Monte Carlo runs of the same node in
onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from onnxinit.moments import Moments
from tests.oracle import check_rule, node_model, predict

PER_CHANNEL = Moments.along([-1.0, 0.0, 0.5, 2.0], [0.5, 1.0, 2.0, 0.25], axis=1, rank=4)


@pytest.mark.parametrize(
    ("op", "opset", "axes", "keepdims"),
    [
        ("ReduceMean", 13, [2, 3], 0),
        ("ReduceMean", 18, [2, 3], 1),
        ("ReduceMean", 18, [1], 1),  # over the tracked channel axis
        ("ReduceSum", 13, [3], 0),
        ("ReduceSumSquare", 18, [3], 1),
        ("ReduceL1", 18, [3], 1),
        ("ReduceL2", 18, [3], 0),
        ("ReduceL2", 18, [2, 3], 1),
        ("ReduceLogSumExp", 18, [3], 1),
        ("ReduceMax", 18, [3], 1),
        ("ReduceMin", 13, [2, 3], 0),
    ],
)
def test_reduce(op, opset, axes, keepdims):
    as_input = opset >= (13 if op == "ReduceSum" else 18)
    if as_input:
        node = helper.make_node(op, ["x", "axes"], ["y"], keepdims=keepdims)
        constants = {"axes": np.array(axes, dtype=np.int64)}
    else:
        node = helper.make_node(op, ["x"], ["y"], axes=axes, keepdims=keepdims)
        constants = None
    shape = (5000, 4, 4, 8) if len(axes) == 1 and axes != [1] else (100_000, 4, 2, 2)
    if axes == [1]:
        shape = (100_000, 4, 1, 1)
    moments = (
        PER_CHANNEL
        if op != "ReduceLogSumExp"
        else Moments.along([-1.0, 0.0, 0.5, 1.0], [0.2, 0.5, 0.3, 0.25], axis=1, rank=4)
    )
    model = node_model(node, {"x": shape}, constants, opset=opset)
    check_rule(model, {"x": moments}, axis=None if axes == [1] else 1)


def test_reduce_noop_with_empty_axes():
    node = helper.make_node("ReduceMean", ["x"], ["y"], noop_with_empty_axes=1)
    model = node_model(node, {"x": (10, 4, 2, 2)})
    _, result = predict(model, {"x": PER_CHANNEL})
    np.testing.assert_allclose(result.moments["y"].var.ravel(), PER_CHANNEL.var.ravel())
