"""A square of an activation whose token field pooled its law (rules/fusion.described_ancestor).

After a causal attention each token has its own variance; the token field's carrier pools it
and describes ``r = Relu(u)`` as a bare Gaussian of r's moments. ``r * r`` (Arcee's and BitNet's
ReLU^2 MLP, ``Relu(u) * Relu(u)``) fused on r itself then integrated the square of a Gaussian:
0.38x on Arcee. The fusion now integrates over u, the farther common ancestor, through the
chain ``Relu``. Predictions against onnxruntime Monte Carlo runs of the whole graph."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.models import causal_attention
from tests.oracle import monte_carlo, predict

B, S, D = 2000, 16, 16


def _model(act: str):
    """x ~ N(0, 1) -> causal average of x Wv (near-zero logits) -> u = o W -> r = act(u)
    -> y = r * r -> z = y W2."""
    rng = np.random.default_rng(0)
    consts = {
        "wq0": rng.normal(size=(D, D)) * 1e-3, "wk0": rng.normal(size=(D, D)) * 1e-3,
        "wv": np.linalg.qr(rng.normal(size=(D, D)))[0],
        "w": rng.normal(size=(D, 2 * D)) / np.sqrt(D),
        "w2": rng.normal(size=(2 * D, D)) / np.sqrt(2 * D),
        "mask": np.where(np.tril(np.ones((S, S), dtype=bool)), 0.0, -np.inf),
    }
    nodes = causal_attention() + [
        helper.make_node("MatMul", ["o", "w"], ["u"]),
        helper.make_node(act, ["u"], ["r"]),
        helper.make_node("Mul", ["r", "r"], ["y"]),
        helper.make_node("MatMul", ["y", "w2"], ["z"]),
    ]
    inits = [numpy_helper.from_array(np.asarray(v, dtype=np.float32), n) for n, v in consts.items()]
    graph = helper.make_graph(
        nodes, "pooled_square",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, S, D])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("r", "y", "z")],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


@pytest.mark.parametrize("act", ["Relu", "Sigmoid"])
def test_square_of_an_activation_with_a_token_field_integrates_over_its_input(act):
    model = _model(act)
    inputs = {"x": Moments.scalar(0.0, 1.0)}
    _, result = predict(model, inputs)
    values = monte_carlo(model, inputs, seed=3)
    assert result.moments["r"].tokens is not None  # the field the carrier pooled under
    for name in ("r", "y", "z"):
        _, var = result.moments[name].total()
        measured = float(np.var(values[name].astype(np.float64)))
        assert var == pytest.approx(measured, rel=0.06), name
