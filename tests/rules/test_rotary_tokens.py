"""The token field through a rotary position embedding (rules/token_scale.py).

Keys that share a causal attention's running average (token t of ``P V`` averages the values
up to t, so tokens s < t share most of their value) keep that covariance through a rotary
embedding, turned by the relative angle: ``Sigma_y[s, t] = Sigma_x[s, t] mean_d cos(theta_d (s -
t))``. A softmax over the logits ``q k^T`` ignores what its keys share, so taking the rotated
keys as independent overstates the probabilities' variance (1.16x on OLMo-2's second layer).
Predictions against onnxruntime Monte Carlo runs of the whole graph."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.models import causal_attention
from tests.oracle import monte_carlo, predict

B, S, D = 3000, 16, 16
EPS = 1e-6


def _rotary(name: str, out: str, half: int) -> list:
    """``out = name * cos + rotate_half(name) * sin`` (Hugging Face's apply_rotary_pos_emb)."""
    return [
        helper.make_node("Slice", [name, "zero", "h", "last"], [f"{name}_a"]),
        helper.make_node("Slice", [name, "h", "big", "last"], [f"{name}_b"]),
        helper.make_node("Neg", [f"{name}_b"], [f"{name}_nb"]),
        helper.make_node("Concat", [f"{name}_nb", f"{name}_a"], [f"{name}_r"], axis=-1),
        helper.make_node("Mul", [name, "cos"], [f"{name}_c"]),
        helper.make_node("Mul", [f"{name}_r", "sin"], [f"{name}_s"]),
        helper.make_node("Add", [f"{name}_c", f"{name}_s"], [out]),
    ]


def _model(rotary: bool, scale: float):
    """x ~ N(0, 1) -> v = x Wv -> o = causal average of v (near-zero logits) -> h = RMSNorm(o)
    -> q = h Wq, k = h Wk (orthogonal) -> rotary -> p = Softmax(q k^T scale + causal mask)."""
    rng = np.random.default_rng(0)
    inv = 1.0 / 10000 ** (np.arange(0, D, 2) / D)
    angles = np.arange(S)[:, None] * inv[None, :]
    angles = np.concatenate([angles, angles], axis=-1)
    consts = {
        "wq0": rng.normal(size=(D, D)) * 1e-3, "wk0": rng.normal(size=(D, D)) * 1e-3,
        "wv": np.linalg.qr(rng.normal(size=(D, D)))[0],
        "wq": np.linalg.qr(rng.normal(size=(D, D)))[0],
        "wk": np.linalg.qr(rng.normal(size=(D, D)))[0],
        "mask": np.where(np.tril(np.ones((S, S), dtype=bool)), 0.0, -np.inf),
        "two": 2.0, "eps": EPS, "scale": scale,
        "cos": np.cos(angles), "sin": np.sin(angles),
    }
    ints = {"axes": np.array([-1]), "zero": np.array([0]), "h": np.array([D // 2]),
            "big": np.array([D]), "last": np.array([-1])}
    nodes = causal_attention() + [
        helper.make_node("Pow", ["o", "two"], ["r0"]),
        helper.make_node("ReduceMean", ["r0", "axes"], ["r1"], keepdims=1),
        helper.make_node("Add", ["r1", "eps"], ["r2"]),
        helper.make_node("Sqrt", ["r2"], ["r3"]),
        helper.make_node("Div", ["o", "r3"], ["hn"]),
        helper.make_node("MatMul", ["hn", "wq"], ["q"]),
        helper.make_node("MatMul", ["hn", "wk"], ["k"]),
    ]
    if rotary:
        nodes += _rotary("q", "qr", D // 2) + _rotary("k", "kr", D // 2)
    else:
        nodes += [helper.make_node("Identity", ["q"], ["qr"]),
                  helper.make_node("Identity", ["k"], ["kr"])]
    nodes += [
        helper.make_node("Transpose", ["kr"], ["krt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["qr", "krt"], ["l1"]),
        helper.make_node("Mul", ["l1", "scale"], ["l2"]),
        helper.make_node("Add", ["l2", "mask"], ["m1"]),
        helper.make_node("Softmax", ["m1"], ["p"], axis=-1),
    ]
    inits = [numpy_helper.from_array(np.asarray(v, dtype=np.float32), n) for n, v in consts.items()]
    inits += [numpy_helper.from_array(v.astype(np.int64), n) for n, v in ints.items()]
    graph = helper.make_graph(
        nodes, "rotary_tokens",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, S, D])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("kr", "l2", "p")],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


@pytest.mark.parametrize("rotary", [True, False])
@pytest.mark.parametrize("scale", [0.5, 1.0])
def test_softmax_after_a_rotary_embedding_sees_the_keys_shared_component(rotary, scale):
    model = _model(rotary, scale)
    inputs = {"x": Moments.scalar(0.0, 1.0)}
    _, result = predict(model, inputs)
    values = monte_carlo(model, inputs, seed=3)
    for name, rtol in (("kr", 0.03), ("l2", 0.05), ("p", 0.05)):
        measured = float(np.var(values[name].astype(np.float64)[~np.isneginf(values[name])]))
        _, var = result.moments[name].total()
        assert var == pytest.approx(measured, rel=rtol), name
    # the keys' covariance across tokens survives the rotation (turned by the relative angle)
    assert result.moments["kr"].tokens is not None
