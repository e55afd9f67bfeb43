"""A hard assignment divided by its count (rules/indicator_share.py).

GroupViT's grouping block assigns each token to one group, ``hard = one_hot(argmax(soft))``,
through the straight-through estimator ``(hard - soft) + soft``, and normalises it over the
tokens: ``y = hard / (sum_t hard + eps)``. The quotient was taken as one of independent factors,
the count near 0 reading ``E[1/(n + eps)^2]`` large (GroupViT: 33.7x). Predictions against
onnxruntime Monte Carlo runs of the whole graph."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from onnxinit.rules.indicator_share import binomial_pmf
from tests.oracle import monte_carlo, predict

B = 64


def _assignment_model(groups: int, tokens: int, eps: float, straight_through: bool, one_hot: str):
    """logits x [B, G, T] -> soft = Softmax over G -> hard = one-hot of its argmax over G
    (ScatterElements of ones into zeros, or OneHot) -> a = (hard - soft) + soft (or hard) ->
    y = a / (ReduceSum(a, tokens) + eps)."""
    inits = {"eps": np.float32(eps), "axes": np.array([-1], np.int64)}
    nodes = [helper.make_node("Softmax", ["x"], ["soft"], axis=1)]
    if one_hot == "scatter":
        inits["zeros"] = np.zeros((B, groups, tokens), np.float32)
        inits["ones"] = np.ones((B, 1, tokens), np.float32)
        nodes += [helper.make_node("ArgMax", ["soft"], ["idx"], axis=1, keepdims=1),
                  helper.make_node("ScatterElements", ["zeros", "idx", "ones"], ["hard"], axis=1)]
    else:
        inits["depth"] = np.array(groups, np.int64)
        inits["values"] = np.array([0.0, 1.0], np.float32)
        nodes += [helper.make_node("ArgMax", ["soft"], ["idx"], axis=1, keepdims=0),
                  helper.make_node("OneHot", ["idx", "depth", "values"], ["hard"], axis=1)]
    if straight_through:
        nodes += [helper.make_node("Sub", ["hard", "soft"], ["diff"]),
                  helper.make_node("Add", ["diff", "soft"], ["a"])]
    else:
        nodes += [helper.make_node("Identity", ["hard"], ["a"])]
    nodes += [helper.make_node("ReduceSum", ["a", "axes"], ["n"], keepdims=1),
              helper.make_node("Add", ["n", "eps"], ["d"]),
              helper.make_node("Div", ["a", "d"], ["y"])]
    graph = helper.make_graph(
        nodes, "assignment",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, groups, tokens])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("a", "n", "y")],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("groups, tokens, eps, straight_through, one_hot", [
    (4, 16, 1.0, True, "scatter"),  # GroupViT's first grouping stage
    (8, 49, 1.0, True, "scatter"),
    (4, 16, 1e-6, True, "scatter"),  # an empty group's row: 0 / eps = 0
    (8, 49, 1.0, False, "onehot"),
])
def test_hard_assignment_over_its_count(groups, tokens, eps, straight_through, one_hot):
    model = _assignment_model(groups, tokens, eps, straight_through, one_hot)
    inputs = {"x": Moments.scalar(0.0, 1.0)}
    _, result = predict(model, inputs)
    measured = np.concatenate([monte_carlo(model, inputs, seed=s)["y"].ravel()
                               for s in range(4)]).astype(np.float64)
    mean, var = result.moments["y"].total()
    assert var == pytest.approx(float(np.var(measured)), rel=0.1)  # 3-34x before
    assert mean == pytest.approx(float(np.mean(measured)), rel=0.05)


def test_binomial_pmf_is_the_binomial_law():
    p = np.array([0.0, 0.1, 0.25, 1.0])
    pmf = binomial_pmf(16, p)
    k = np.arange(17)
    assert np.allclose(pmf.sum(axis=-1), 1.0)
    assert np.allclose((pmf * k).sum(axis=-1), 16 * p)
    assert np.allclose((pmf * k * k).sum(axis=-1) - (16 * p) ** 2, 16 * p * (1 - p))
