"""A uniform draw keeps its law (rules/random_draws.uniform_source).

GroupViT's Gumbel softmax adds ``-log(-log(U))`` noise, U = RandomUniformLike scaled into
(0, 1). The draw was a Gaussian of its mean and variance: the first Log's input went negative
with probability 4%, its rule refused, the node was measured alone on Gaussian samples, and the
analysis stopped ("the empirical fallback measured a non-finite mean or variance"). Predictions
against onnxruntime Monte Carlo runs of the whole graph."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.oracle import monte_carlo, predict

B, G, N = 64, 8, 64


def _gumbel_model(low: float):
    """logits x [B, G, N] -> U = RandomUniformLike(x) (1 - 2 low) + low ->
    g = -log(-log(U)) -> s = x + g."""
    consts = {"a": 1.0 - 2 * low, "c": low, "minus": -1.0}
    nodes = [
        helper.make_node("RandomUniformLike", ["x"], ["u0"], seed=5.0),
        helper.make_node("Mul", ["u0", "a"], ["u1"]),
        helper.make_node("Add", ["c", "u1"], ["u"]),
        helper.make_node("Log", ["u"], ["l1"]),
        helper.make_node("Mul", ["minus", "l1"], ["e"]),
        helper.make_node("Log", ["e"], ["l2"]),
        helper.make_node("Mul", ["minus", "l2"], ["g"]),
        helper.make_node("Add", ["x", "g"], ["s"]),
    ]
    inits = [numpy_helper.from_array(np.asarray(v, dtype=np.float32), n) for n, v in consts.items()]
    graph = helper.make_graph(
        nodes, "gumbel",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, G, N])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
         for n in ("u", "l1", "e", "l2", "g", "s")], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("low", [1e-6, 0.05])
def test_gumbel_noise_of_a_uniform_draw_is_predicted(low):
    model = _gumbel_model(low)
    inputs = {"x": Moments.scalar(0.0, 1.0)}
    _, result = predict(model, inputs)  # stopped with a PredictionError before
    values = monte_carlo(model, inputs, seed=3)
    for name in ("u", "l1", "e", "l2", "g", "s"):
        mean, var = result.moments[name].total()
        measured = values[name].astype(np.float64)
        assert var == pytest.approx(float(np.var(measured)), rel=0.1), name
        assert mean == pytest.approx(float(np.mean(measured)), abs=0.05 * np.sqrt(var)), name
    if low > 1e-3:
        return
    # the Gumbel law: mean Euler's gamma, variance pi^2 / 6
    mean, var = result.moments["g"].total()
    assert mean == pytest.approx(np.euler_gamma, rel=0.01)
    assert var == pytest.approx(np.pi**2 / 6, rel=0.01)
