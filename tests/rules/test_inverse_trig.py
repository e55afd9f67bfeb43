"""Inverse cosine and sine of a bounded input (rules/inverse_trig.py).

YOSO's attention is ``(1 - acos(q_hat k_hat^T) / pi)^h V`` on L2-normalised rows: the cosines lie
in [-1, 1], but the Gaussian the analysis keeps for them (variance 1/d) has tails beyond the
bounds, where ``acos`` is NaN; with no rule the node was measured alone on samples of that
Gaussian and the analysis stopped ("the empirical fallback measured a non-finite mean or
variance"). Predictions against onnxruntime Monte Carlo runs of the whole graph."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.graph import load
from onnxinit.moments import Moments
from onnxinit.rules.context import RuleContext, RuleError, RuleSettings
from onnxinit.rules.inverse_trig import acos, outside_bounds
from tests.oracle import monte_carlo, predict

B, S, D, E = 256, 16, 32, 16


def _normalised(x: str, out: str) -> list:
    """``out = x / max(||x||_2, 1e-12)`` over the last axis (torch's F.normalize, exported)."""
    return [
        helper.make_node("ReduceL2", [x], [f"{out}_n"], axes=[-1], keepdims=1),
        helper.make_node("Clip", [f"{out}_n", "eps"], [f"{out}_c"]),
        helper.make_node("Expand", [f"{out}_c", f"{out}_shape"], [f"{out}_e"]),
        helper.make_node("Shape", [x], [f"{out}_shape"]),
        helper.make_node("Div", [x, f"{out}_e"], [out]),
    ]


def _model(op: str):
    """x ~ N(0, 1) [B, S, D] -> q, k, v = x W -> cosines c = q_hat k_hat^T -> a = op(c)
    -> p = (1 - a / pi)^2 -> y = p v."""
    rng = np.random.default_rng(0)
    consts = {
        "wq": rng.normal(size=(D, E)) / np.sqrt(D), "wk": rng.normal(size=(D, E)) / np.sqrt(D),
        "wv": rng.normal(size=(D, E)) / np.sqrt(D), "eps": np.float32(1e-12),
        "one": np.float32(1.0), "pi": np.float32(np.pi), "two": np.float32(2.0),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("MatMul", ["x", "wv"], ["v"]),
        *_normalised("q", "qh"), *_normalised("k", "kh"),
        helper.make_node("Transpose", ["kh"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["qh", "kt"], ["c"]),
        helper.make_node(op, ["c"], ["a"]),
        helper.make_node("Div", ["a", "pi"], ["r"]),
        helper.make_node("Sub", ["one", "r"], ["s"]),
        helper.make_node("Pow", ["s", "two"], ["p"]),
        helper.make_node("MatMul", ["p", "v"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.asarray(v, dtype=np.float32), n) for n, v in consts.items()]
    graph = helper.make_graph(
        nodes, "cosine_attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, S, D])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("c", "a", "p", "y")],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("op", ["Acos", "Asin"])
def test_inverse_cosine_of_cosines_is_predicted_where_the_gaussian_leaves_the_bounds(op):
    model = _model(op)
    inputs = {"x": Moments.scalar(0.0, 1.0)}
    _, result = predict(model, inputs)  # stopped with a PredictionError before
    values = monte_carlo(model, inputs, seed=3)
    assert np.abs(values["c"]).max() <= 1.0 + 1e-6  # the cosines are bounded ...
    assert outside_bounds(result.moments["c"], 3) > 1e-5  # ... their predicted law is not
    for name in ("a", "p", "y"):
        mean, var = result.moments[name].total()
        measured = values[name].astype(np.float64)
        assert np.isfinite(mean) and np.isfinite(var), name
        assert var == pytest.approx(float(np.var(measured)), rel=0.1), name
        assert mean == pytest.approx(float(np.mean(measured)), abs=0.05 * np.sqrt(var)), name


def test_an_input_far_outside_the_bounds_is_refused():
    """An unbounded input (a standard normal: variance 1 about 0) has no law on [-1, 1]: the
    rule refuses it (the runtime computes NaN there)."""
    node = helper.make_node("Acos", ["x"], ["y"])
    graph = helper.make_graph([node], "acos", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [8, 4])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [8, 4])])
    g = load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                               ir_version=8))
    ctx = RuleContext(node, "acos", g, RuleSettings())
    with pytest.raises(RuleError, match="no law"):
        acos([Moments.scalar(0.0, 1.0)], ctx)
