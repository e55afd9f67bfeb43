"""A mean square over the features of a residual stream whose per-token variance varies a
little (token_field.POWER_UNEVEN): ``r = x + a Softmax(causal) (y Wv)``, RMSNorm's
``ReduceMean(Pow(r, 2))`` (y another input and Wv orthogonal, so that the features stay
uncorrelated: the mean's variance is the profile's, not a feature covariance's). Token t of the causal average has variance about ``1 / (t + 1)``, so
the stream's profile ``1 + a^2 / (t + 1)`` spreads by about 0.1 of its mean: under the spread at
which the element-wise rules spell tokens out (token_field._UNEVEN, 0.125), but each token's mean
square follows its own variance, ``E[m_t] = mean_d nu_d p_t``, and the variance of ``m`` over the
tokens, ``nu^2 spread^2``, is of the order of one token's own ``2 nu^2 / K`` (T5's decoder at 64
features: 0.71x pooled at one weight draw, 0.93x spelled out at another whose spread was 0.128).
Predictions against onnxruntime Monte Carlo runs of the graph, at two draws of the weights."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.oracle import monte_carlo, predict
from tests.rules.test_per_token import causal_attention_nodes

B, S, D = 2000, 16, 64
SCALE = 0.7  # a: the attention branch's weight in the stream


def _model(draw: int, square: str):
    """``m = ReduceMean(r^2)`` over the features, ``r = x + a o``, ``o = P (y Wv)`` with
    near-uniform causal probabilities P; the square as ``Pow(r, 2)`` or ``Mul(r, r)``."""
    nodes, consts = causal_attention_nodes(draw, values="y")
    consts.update(a=SCALE, two=2.0)
    squared = (helper.make_node("Pow", ["r", "two"], ["r2"]) if square == "pow"
               else helper.make_node("Mul", ["r", "r"], ["r2"]))
    nodes += [
        helper.make_node("Mul", ["o", "a"], ["ao"]),
        helper.make_node("Add", ["x", "ao"], ["r"]),
        squared,
        helper.make_node("ReduceMean", ["r2", "axes"], ["m"], keepdims=1),
    ]
    inits = [numpy_helper.from_array(np.asarray(v, dtype=np.float32), n) for n, v in consts.items()]
    inits.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "axes"))
    graph = helper.make_graph(
        nodes, "power_profile",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [B, S, D]) for n in ("x", "y")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("r", "m")], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


@pytest.mark.parametrize("draw", [0, 1])
@pytest.mark.parametrize("square", ["pow", "mul"])
def test_mean_square_follows_a_slightly_uneven_profile(draw, square):
    model = _model(draw, square)
    inputs = {"x": Moments.scalar(0.0, 1.0), "y": Moments.scalar(0.0, 1.0)}
    _, result = predict(model, inputs)
    values = monte_carlo(model, inputs, seed=draw + 3)
    r = values["r"].astype(np.float64)
    m = values["m"].astype(np.float64)[..., 0]
    p = r.var(axis=(0, 2))
    spread = p.std() / p.mean()
    assert 0.05 < spread < 0.125  # under the element-wise rules' threshold
    predicted = result.moments["m"]
    mean, var = predicted.total()
    assert var == pytest.approx(m.var(), rel=0.06)
    assert mean == pytest.approx(m.mean(), rel=0.02)
    # each token's mean square: its own variance, not the pooled one
    token_means = np.broadcast_to(predicted.expand_rank(3).mean, (1, S, 1))[0, :, 0]
    np.testing.assert_allclose(token_means, m.mean(axis=0), rtol=0.03)
