"""Per-token variances after a causal attention (rules/tokens.py ``per_token_inputs``): token t
of ``P V`` averages t + 1 values, so its variance falls with t (the token field's diagonal)
while the moments hold one variance for all tokens. Non-linear point-wise functions after it
(GELU written with Erf or Tanh and Pow, SiLU as ``x * Sigmoid(x)``, RMSNorm's mean square and the
division by its root) must be integrated per token: predictions against onnxruntime Monte Carlo
runs of the whole graph, per token (the variance along the token axis) and in total."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.oracle import monte_carlo, predict

B, S, D = 4000, 16, 64
EPS = 1e-6


def causal_attention_nodes(draw: int = 0, values: str = "x"):
    """``o = Softmax(q k^T + causal mask) v`` with near-zero logits (each query averages the
    values of the tokens up to it about equally) and ``v = values Wv`` (``q`` and ``k`` from x),
    inputs ~ N(0, 1), Wv orthogonal (features uncorrelated: a mean over them is the model's, not
    a correlation's); weights drawn with seed ``draw``."""
    rng = np.random.default_rng(draw)
    consts = {
        "wq": rng.normal(size=(D, D)) * 0.02 / np.sqrt(D),
        "wk": rng.normal(size=(D, D)) * 0.02 / np.sqrt(D),
        "wv": np.linalg.qr(rng.normal(size=(D, D)))[0],
        "mask": np.where(np.tril(np.ones((S, S), dtype=bool)), 0.0, -np.inf),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["logits"]),
        helper.make_node("Add", ["logits", "mask"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
        helper.make_node("MatMul", [values, "wv"], ["v"]),
        helper.make_node("MatMul", ["p", "v"], ["o"]),
    ]
    return nodes, consts


def _tail(kind: str):
    """Nodes from ``o`` to ``y`` and their constants."""
    c = {}
    if kind == "gelu_erf":  # 0.5 x (1 + erf(x / sqrt 2))
        c = {"r2": np.sqrt(2.0), "one": 1.0, "half": 0.5}
        nodes = [helper.make_node("Div", ["o", "r2"], ["g0"]),
                 helper.make_node("Erf", ["g0"], ["g1"]),
                 helper.make_node("Add", ["g1", "one"], ["g2"]),
                 helper.make_node("Mul", ["o", "g2"], ["g3"]),
                 helper.make_node("Mul", ["g3", "half"], ["y"])]
    elif kind == "gelu_tanh":  # GPT-2: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        c = {"three": 3.0, "c3": 0.044715, "s": np.sqrt(2 / np.pi), "one": 1.0, "half": 0.5}
        nodes = [helper.make_node("Pow", ["o", "three"], ["t0"]),
                 helper.make_node("Mul", ["t0", "c3"], ["t1"]),
                 helper.make_node("Add", ["o", "t1"], ["t2"]),
                 helper.make_node("Mul", ["t2", "s"], ["t3"]),
                 helper.make_node("Tanh", ["t3"], ["t4"]),
                 helper.make_node("Add", ["t4", "one"], ["t5"]),
                 helper.make_node("Mul", ["o", "half"], ["t6"]),
                 helper.make_node("Mul", ["t6", "t5"], ["y"])]
    elif kind == "silu":  # Llama's MLP gate
        nodes = [helper.make_node("Sigmoid", ["o"], ["s0"]),
                 helper.make_node("Mul", ["o", "s0"], ["y"])]
    elif kind == "square":
        c = {"two": 2.0}
        nodes = [helper.make_node("Pow", ["o", "two"], ["y"])]
    elif kind in ("mean_square", "rmsnorm"):  # Llama's RMSNorm, written out as ops
        c = {"two": 2.0, "eps": EPS, "axes": np.array([-1])}
        nodes = [helper.make_node("Pow", ["o", "two"], ["r0"]),
                 helper.make_node("ReduceMean", ["r0", "axes"],
                                  ["y" if kind == "mean_square" else "r1"], keepdims=1)]
        if kind == "rmsnorm":
            nodes += [helper.make_node("Add", ["r1", "eps"], ["r2"]),
                      helper.make_node("Sqrt", ["r2"], ["r3"]),
                      helper.make_node("Div", ["o", "r3"], ["y"])]
    else:
        raise ValueError(kind)
    return nodes, c


def _model(kind: str, outputs=("o", "y")):
    nodes, consts = causal_attention_nodes()
    tail, c = _tail(kind)
    consts.update(c)
    graph = helper.make_graph(
        nodes + tail, "per_token",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, S, D])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32), n) if n != "axes"
         else numpy_helper.from_array(v, n) for n, v in consts.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def _per_token(m: Moments) -> tuple[np.ndarray, np.ndarray]:
    """Predicted per-token (mean, var) over the batch and features: with the field, element
    (t, d) has variance ``nu_d p_t`` (``p`` the field's diagonal, mean 1); plus the spread of
    the features' means within a token."""
    m = m.expand_rank(3)
    mean = np.broadcast_to(m.mean, (1, S, D))[0]
    var = np.broadcast_to(m.var, (1, S, D))[0]
    if m.tokens is not None:
        p = np.diag(m.tokens.cov)
        var = var * (p / p.mean())[:, None]
    return mean.mean(axis=1), var.mean(axis=1) + mean.var(axis=1)


@pytest.fixture(scope="module")
def inputs():
    return {"x": Moments.scalar(0.0, 1.0)}


def test_causal_average_has_a_per_token_variance_profile(inputs):
    _, result = predict(_model("square"), inputs)
    values = monte_carlo(_model("square"), inputs, seed=1)["o"].astype(np.float64)
    measured = values.var(axis=(0, 2))
    _, var = _per_token(result.moments["o"])
    assert measured[0] / measured[-1] > 8  # token 0 averages 1 value, token 15 averages 16
    np.testing.assert_allclose(var, measured, rtol=0.08)


@pytest.mark.parametrize("kind,rtol,out", [
    ("gelu_erf", 0.05, "y"), ("gelu_tanh", 0.05, "y"), ("silu", 0.05, "y"),
    ("square", 0.06, "y"), ("mean_square", 0.06, "y"),
    ("rmsnorm", 0.05, "r3"),  # the root of the mean square, per token
    ("rmsnorm", 0.05, "y"),  # x over it: about 1 for every token, with or without the profile
])
def test_point_wise_functions_integrate_each_token(inputs, kind, rtol, out):
    model = _model(kind, ("o", out))
    _, result = predict(model, inputs)
    assert result.rules[out] not in ("pass-through",), result.fallbacks
    y = monte_carlo(model, inputs, seed=2)[out].astype(np.float64)
    m = result.moments[out]
    # the tensor's mean and variance (what analyze reports)
    mean, var = m.total()
    assert var == pytest.approx(y.var(), rel=rtol)
    assert mean == pytest.approx(y.mean(), abs=rtol * np.sqrt(y.var()))
    # and token by token
    p_mean, p_var = _per_token(m)
    np.testing.assert_allclose(p_var, y.var(axis=(0, 2)), rtol=2 * rtol)
    np.testing.assert_allclose(p_mean, y.mean(axis=(0, 2)), atol=2 * rtol * np.sqrt(y.var()))
