"""A float Cast of an integer mask computed from a signal through more than 8 nodes
(rules/empirical.py: the integer producers run along with the node).

A top-2 router with an expert capacity (NLLB-MoE, Switch-style) builds its second mask as
``onehot(argmax(where(first, -inf, logits))) * (cumsum(...) - 1 + count(first) < capacity)``:
twelve integer and boolean nodes between the logits and the float Cast. The fallback ran at most
8 producers along with the node, refused the rest, and the Cast's statistics were passed
through from nothing (mean 0, variance 1 for a 0/1 mask of mean 0.1). Predictions against
onnxruntime runs of the graph."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.oracle import monte_carlo, predict

T, E, CAPACITY = 1024, 4, 384


def _model():
    """logits [T, E] -> the first expert's one-hot m1, the second's m2 (argmax of the logits
    with the first masked), kept while its running count plus m1's count stays below the
    capacity: y = float(m2 * keep)."""
    consts = {"depth": np.array(E, dtype=np.int64),
              "values": np.array([0, 1], dtype=np.int64),
              "fill": np.array(-np.inf, dtype=np.float32),
              "one": np.array(1, dtype=np.int64), "zero": np.array(0, dtype=np.int64),
              "tokens": np.array([0], dtype=np.int64),
              "capacity": np.array(CAPACITY, dtype=np.int64)}
    nodes = [
        helper.make_node("ArgMax", ["logits"], ["i1"], axis=-1, keepdims=0),
        helper.make_node("OneHot", ["i1", "depth", "values"], ["m1"], axis=-1),
        helper.make_node("Cast", ["m1"], ["b1"], to=TensorProto.BOOL),
        helper.make_node("Where", ["b1", "fill", "logits"], ["second"]),
        helper.make_node("ArgMax", ["second"], ["i2"], axis=-1, keepdims=0),
        helper.make_node("OneHot", ["i2", "depth", "values"], ["m2"], axis=-1),
        helper.make_node("CumSum", ["m2", "zero"], ["c2"]),
        helper.make_node("Sub", ["c2", "one"], ["p2"]),
        helper.make_node("ReduceSum", ["m1", "tokens"], ["n1"], keepdims=1),
        helper.make_node("Add", ["p2", "n1"], ["q2"]),
        helper.make_node("Less", ["q2", "capacity"], ["keep"]),
        helper.make_node("Cast", ["keep"], ["k2"], to=TensorProto.INT64),
        helper.make_node("Mul", ["m2", "k2"], ["kept"]),
        helper.make_node("Cast", ["kept"], ["y"], to=TensorProto.FLOAT),
    ]
    inits = [numpy_helper.from_array(v, n) for n, v in consts.items()]
    graph = helper.make_graph(
        nodes, "capacity_router",
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [T, E])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_cast_of_a_mask_twelve_integer_nodes_deep_is_measured():
    model = _model()
    inputs = {"logits": Moments.scalar(0.0, 1.0)}
    _, result = predict(model, inputs)
    runs = [monte_carlo(model, inputs, seed=s)["y"].astype(np.float64) for s in range(8)]
    measured = np.concatenate(runs)
    mean, var = result.moments["y"].total()
    assert 0.05 < measured.mean() < 0.2  # a capacity keeps part of the second choices
    assert mean == pytest.approx(measured.mean(), rel=0.1)  # mean 0 before
    assert var == pytest.approx(measured.var(), rel=0.1)  # 1 before
