"""A node measured by the empirical fallback whose one signal input is computed from the other
(rules/empirical.py): a router's top-k weights over their own sum.

DBRX normalises its top-2 routing weights, ``w / ReduceL1(w)``: ``Div`` by a signal goes to
the fallback, which drew the numerator and the denominator independently, each from its own
moments, as if the sum were another token's (2.5-3.0x the measured variance of the normalised
weights). The denominator is now computed from the numerator's samples (the nodes between them
run along with the Div), and the top-k of a softmax row from the row's logits (the TopK node
itself is measured so too). DBRX casts the softmax to float first: the top-k of a float Cast of
a softmax is drawn from the logits too (0.66x its measured variance before, the Cast's elements
drawn one by one). Predictions against onnxruntime runs of the graph."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.oracle import monte_carlo, predict

N, E, K = 4096, 4, 2


def _model(reduce: str, cast: bool = False):
    """logits [N, E] ~ N(0, 0.1) (a router's at init) -> p = softmax (cast to float) -> w =
    top-2 of p -> y = w / (reduce(w) + 1e-20)."""
    consts = [numpy_helper.from_array(np.array([K], dtype=np.int64), "k"),
              numpy_helper.from_array(np.array(1e-20, dtype=np.float32), "tiny"),
              numpy_helper.from_array(np.array([-1], dtype=np.int64), "last")]
    nodes = [
        helper.make_node("Softmax", ["logits"], ["p0" if cast else "p"], axis=-1),
        *([helper.make_node("Cast", ["p0"], ["p"], to=TensorProto.FLOAT)] if cast else []),
        helper.make_node("TopK", ["p", "k"], ["w", "i"], axis=-1),
        helper.make_node(reduce, ["w", "last"], ["s0"], keepdims=1),  # axes an input at 18
        helper.make_node("Add", ["s0", "tiny"], ["s"]),
        helper.make_node("Div", ["w", "s"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "router_weights",
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [N, E])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


@pytest.mark.parametrize("cast", [False, True])
@pytest.mark.parametrize("reduce", ["ReduceL1", "ReduceSum"])
def test_weights_over_their_own_sum_keep_their_dependence(reduce, cast):
    model = _model(reduce, cast)
    inputs = {"logits": Moments.scalar(0.0, 0.1)}
    model.graph.output.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, None))
    _, result = predict(model, inputs)
    values = monte_carlo(model, inputs, seed=4)
    for name in ("w", "y"):  # w: top-2 of a softmax row, drawn from its logits
        measured = values[name].astype(np.float64)
        mean, var = result.moments[name].total()
        assert mean == pytest.approx(measured.mean(), rel=0.02), name  # y: 0.548, not 1/K
        assert var == pytest.approx(measured.var(), rel=0.1), name  # y: 2.27x before
