"""The squared length of a dense layer of a LayerNorm's rows (rules/normalised_square_sum.py):
its law against Monte Carlo in float64, and the reduce rule on an ONNX graph against
onnxruntime. A row whose mean pattern dominates (a class token) fluctuates orthogonally to that
mean after the norm, and every normalised row has a fixed length; summed as independent squares
(the reduce rule before) the graph's squared length read 1.6-20x."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit import analyze
from onnxinit.rules.normalised_square_sum import quadratic_ratio_moments

from ..models import make_model
from ..oracle import measured_over_token_ids, predict

D, E, EPS = 64, 32, 1e-5


def _layer(seed: int):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((D, E)) / np.sqrt(D)
    g = 1 + 0.2 * rng.standard_normal(D)
    beta = 0.1 * rng.standard_normal(D)
    b = 0.1 * rng.standard_normal(E)
    return rng, w, g, beta, b


# (mean pattern's scale, the fluctuation's variance): a class token, balanced, zero-mean rows
ROWS = [(1.0, 0.03), (0.7, 0.5), (0.0, 1.0)]


@pytest.mark.parametrize("scale, variance", ROWS)
def test_law_matches_monte_carlo(scale, variance):
    rng, w, g, beta, b = _layer(0)
    mu = scale * rng.standard_normal(D)
    n = variance * rng.uniform(0.5, 1.5, D)
    x = mu + np.sqrt(n) * rng.standard_normal((200_000, D))
    v = x - x.mean(axis=1, keepdims=True)
    z = g * v / np.sqrt((v * v).mean(axis=1, keepdims=True) + EPS) + beta
    q = ((z @ w + b) ** 2).sum(axis=1)
    p = np.eye(D) - 1.0 / D
    wg = g[:, None] * w
    c = w.T @ beta + b
    mean, var = quadratic_ratio_moments(mu[None], n[None], p @ wg @ wg.T @ p, p @ wg @ c,
                                        float(c @ c), EPS)
    assert mean[0] == pytest.approx(q.mean(), rel=0.01)
    assert var[0] == pytest.approx(q.var(), rel=0.06)


def _graph(scale: float, spread: float, square: str):
    """x (N(0, 1) inputs) times ``spread`` plus a constant pattern of scale ``scale``, a
    LayerNorm, a dense layer with a bias, then its squared length."""
    rng, w, g, beta, b = _layer(1)
    f32 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    consts = [f32("spread", spread), f32("pattern", scale * rng.standard_normal(D)),
              f32("g", g), f32("beta", beta), f32("w", w), f32("b", b), f32("two", 2.0),
              numpy_helper.from_array(np.array([-1], np.int64), "axes")]
    nodes = [helper.make_node("Mul", ["x", "spread"], ["small"]),
             helper.make_node("Add", ["small", "pattern"], ["row"]),
             helper.make_node("LayerNormalization", ["row", "g", "beta"], ["z"], axis=-1,
                              epsilon=EPS),
             helper.make_node("MatMul", ["z", "w"], ["dense"]),
             helper.make_node("Add", ["dense", "b"], ["y"])]
    if square == "pow":
        nodes += [helper.make_node("Pow", ["y", "two"], ["sq"]),
                  helper.make_node("ReduceSum", ["sq", "axes"], ["q"], keepdims=1)]
    else:  # opset 17: the axes an attribute
        op = "ReduceSumSquare" if square == "sum_square" else "ReduceL2"
        nodes += [helper.make_node(op, ["y"], ["q"], axes=[-1], keepdims=1)]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4096, D])],
                      [helper.make_tensor_value_info("q", TensorProto.FLOAT, [4096, 1])],
                      consts, opset=17)


@pytest.mark.parametrize("square", ["pow", "sum_square", "l2"])
@pytest.mark.parametrize("scale, spread", [(1.0, 0.2), (0.7, 0.7)])
def test_reduce_of_the_squares_matches_onnxruntime(square, scale, spread):
    found = analyze(_graph(scale, spread, square), batch_size=4096, measure=True).tensors
    q = next(t for t in found if t.name == "q")
    assert q.var == pytest.approx(q.measured_var, rel=0.10)
    assert q.mean == pytest.approx(q.measured_mean, rel=0.02)


B, S, V = 64, 16, 128


def _pooled_token_graph():
    """Token rows (a table's rows, each feature 0.02 as in CLIP, plus a position pattern of the
    same size), a LayerNorm, the rows flattened and the row of token ``argmax(ids == V)`` of
    each sample gathered (no id equals V: token 0), then a dense layer and its squared length:
    CLIP's text embedding. The Gather of computed indices went to the empirical fallback and
    the squared length was summed over independent squares: 1.7x."""
    rng, w, g, beta, b = _layer(2)
    f32 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    i64 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.int64), name)  # noqa: E731
    consts = [f32("table", 0.02 * rng.standard_normal((V, D))),
              f32("positions", 0.02 * rng.standard_normal((S, D))), f32("g", g),
              f32("beta", beta), f32("w", w), f32("b", b), f32("two", 2.0),
              i64("eos", V), i64("offsets", np.arange(B) * S), i64("axes", [-1])]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["tokens"]),
             helper.make_node("Add", ["tokens", "positions"], ["rows"]),
             helper.make_node("LayerNormalization", ["rows", "g", "beta"], ["z"], axis=-1,
                              epsilon=EPS),
             helper.make_node("Flatten", ["z"], ["flat"], axis=2),
             helper.make_node("Equal", ["ids", "eos"], ["is_eos"]),
             helper.make_node("Cast", ["is_eos"], ["eos_int"], to=TensorProto.INT32),
             helper.make_node("ArgMax", ["eos_int"], ["first"], axis=-1, keepdims=0),
             helper.make_node("Add", ["first", "offsets"], ["picked"]),
             helper.make_node("Gather", ["flat", "picked"], ["pooled"], axis=0),
             helper.make_node("MatMul", ["pooled", "w"], ["dense"]),
             helper.make_node("Add", ["dense", "b"], ["y"]),
             helper.make_node("Pow", ["y", "two"], ["sq"]),
             helper.make_node("ReduceSum", ["sq", "axes"], ["q"], keepdims=1)]
    return make_model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, [B, S])],
                      [helper.make_tensor_value_info("q", TensorProto.FLOAT, [B, 1]),
                       helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [B, D])],
                      consts, opset=17)


def test_squared_length_of_a_row_pooled_at_a_computed_token():
    model = _pooled_token_graph()
    _, result = predict(model, {})
    measured = measured_over_token_ids(model, ["pooled", "q"], V, (B, S), batches=64)
    assert result.rules["pooled"] == "gather"
    assert result.moments["pooled"].total()[1] == pytest.approx(measured["pooled"], rel=0.05)
    assert result.moments["q"].total()[1] == pytest.approx(measured["q"], rel=0.10)
