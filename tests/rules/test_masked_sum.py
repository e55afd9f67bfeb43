"""A masked element plus or minus a signal stays masked (rules/mixture.binary_independent).

mLSTM's stabilised gate matrix (xLSTM) is ``D = Where(causal, F_i - F_j, -inf) + i_j`` minus
its row maximum, then ``exp``: the positions the causal mask fills hold -inf exactly, whatever
finite signal is added or subtracted. The independent-sum rule gave them mean -inf with the
other operand's variance, and the analysis stopped ("rule binary predicted a non-finite mean
or variance ... this is a bug in onnxinit"). Predictions against onnxruntime runs of the graph.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.oracle import monte_carlo, predict

B, S = 4096, 8


def _model(op: str):
    """a [B, S, S], b [B, S, 1] ~ N(0, 1/4): y = Where(tril, a, -inf) (op) b, e = exp(y - 2)."""
    mask = np.tril(np.ones((S, S), dtype=bool))
    consts = [numpy_helper.from_array(mask, "tril"),
              numpy_helper.from_array(np.array(-np.inf, dtype=np.float32), "fill"),
              numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")]
    nodes = [
        helper.make_node("Where", ["tril", "a", "fill"], ["masked"]),
        helper.make_node(op, ["masked", "b"], ["y"]),
        helper.make_node("Sub", ["y", "two"], ["z"]),
        helper.make_node("Exp", ["z"], ["e"]),
    ]
    graph = helper.make_graph(
        nodes, "masked_sum",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [B, S, S]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [B, S, 1])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "e")],
        consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("op", ["Add", "Sub"])
def test_a_masked_element_plus_or_minus_a_signal_stays_masked(op):
    model = _model(op)
    inputs = {"a": Moments.scalar(0.0, 0.25), "b": Moments.scalar(0.0, 0.25)}
    _, result = predict(model, inputs)  # stopped with a PredictionError before
    values = monte_carlo(model, inputs, seed=5)
    masked = ~np.tril(np.ones((S, S), dtype=bool))
    y = result.moments["y"]
    mean = np.broadcast_to(y.mean, (1, S, S))[0]
    var = np.broadcast_to(y.var, (1, S, S))[0]
    assert np.isneginf(values["y"][:, masked]).all()
    assert np.isneginf(mean[masked]).all() and (var[masked] == 0).all()
    assert np.allclose(var[~masked], 0.5)  # Var a + Var b, measured below
    e = result.moments["e"]
    e_mean = np.broadcast_to(e.mean, (1, S, S))[0]
    e_var = np.broadcast_to(e.var, (1, S, S))[0]
    measured = values["e"].astype(np.float64)
    assert (measured[:, masked] == 0).all() and (e_var[masked] == 0).all()
    assert (e_mean[masked] == 0).all()
    open_ = measured[:, ~masked]  # lognormal: pooled over the open positions
    assert e_var[~masked].mean() == pytest.approx(open_.var(axis=0).mean(), rel=0.1)
    assert e_mean[~masked].mean() == pytest.approx(open_.mean(), rel=0.02)
    assert np.var(values["y"][:, ~masked].astype(np.float64)) == pytest.approx(0.5, rel=0.05)
