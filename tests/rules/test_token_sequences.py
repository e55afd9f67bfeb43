"""Covariance across tokens in recurrent sequences (RWKV's token shift and WKV scan), hand-built
and small, against onnxruntime measurements:

* a sequence written one step at a time (ScatterND per step) from jointly drawn steps carries
  their correlation as its token field (``rules/token_scatter.py``), read here by the mean over
  its tokens;
* the sum of a sequence and its copy shifted by one token (``m x_t + (1 - m) x_{t-1}``, a Pad
  that crops) has the cross term ``2 m (1 - m) Cov(x_t, x_{t-1})`` (``rules/shifted_sum.py``);
* the joint draws of a leaf with a token field draw its tokens correlated
  (``rules/token_draws.py``): ``2 y_0 - (y_0 + y_1)`` of an attention output.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.models import make_model
from tests.real.compare import predicted_and_measured

N, T, D = 256, 6, 16  # batch, tokens, features


def _init(name, array, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(array, dtype=dtype), name)


def _value(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _check(model, names, rel=0.1):
    predicted, measured = predicted_and_measured(model, names, N, runs=4)
    for name in names:
        p, m = predicted[name].var, measured[name][1]
        assert p == pytest.approx(m, rel=rel), (name, p, m)


def _scan_model():
    """num_t = num_{t-1} + e^{k_t} v_t, den_t = den_{t-1} + e^{k_t}, h_t = num_t / den_t (a
    running weighted average of the values, RWKV's WKV without the decay), each h_t written
    into token t of a zero sequence by its own ScatterND; then the mean over the tokens."""
    inits = [_init("zeros", np.zeros((N, T, D)))]
    nodes = []
    num = den = None
    seq = "zeros"
    for t in range(T):
        inits += [_init(f"t{t}", t, np.int64),
                  _init(f"idx{t}", np.stack([np.arange(N), np.full(N, t)], axis=1), np.int64)]
        nodes += [helper.make_node("Gather", ["k", f"t{t}"], [f"k{t}"], axis=1),
                  helper.make_node("Gather", ["v", f"t{t}"], [f"v{t}"], axis=1),
                  helper.make_node("Exp", [f"k{t}"], [f"e{t}"]),
                  helper.make_node("Mul", [f"e{t}", f"v{t}"], [f"ev{t}"])]
        if t == 0:
            num, den = "ev0", "e0"
        else:
            nodes += [helper.make_node("Add", [num, f"ev{t}"], [f"num{t}"]),
                      helper.make_node("Add", [den, f"e{t}"], [f"den{t}"])]
            num, den = f"num{t}", f"den{t}"
        nodes += [helper.make_node("Div", [num, den], [f"h{t}"]),
                  helper.make_node("ScatterND", [seq, f"idx{t}", f"h{t}"], [f"seq{t}"])]
        seq = f"seq{t}"
    nodes.append(helper.make_node("ReduceMean", [seq], ["pooled"], axes=[1], keepdims=1))
    return make_model(nodes, [_value("k", (N, T, D)), _value("v", (N, T, D))],
                      [_value("pooled", (N, 1, D))], inits, opset=17)


def test_a_scattered_scan_carries_its_steps_correlation():
    """The steps average overlapping values: the mean over the tokens keeps much more of a
    token's variance than independent tokens would give it."""
    _check(_scan_model(), ["pooled"])


def _attention(nodes, inits, x: str, out: str):
    """``out = softmax(x Wq (x Wk)^T / 4) x Wv``: tokens that share most of their value (a
    near-uniform average), which the attention rule describes by a token field."""
    rng = np.random.default_rng(5)
    for w in ("wq", "wk", "wv"):
        inits.append(_init(w, rng.standard_normal((D, D)) / np.sqrt(D)))
    inits += [_init("temp", 0.25), _init("perm", [0, 2, 1], np.int64)]
    nodes += [helper.make_node("MatMul", [x, "wq"], ["q"]),
              helper.make_node("MatMul", [x, "wk"], ["kk"]),
              helper.make_node("MatMul", [x, "wv"], ["vv"]),
              helper.make_node("Transpose", ["kk"], ["kt"], perm=[0, 2, 1]),
              helper.make_node("MatMul", ["q", "kt"], ["logits"]),
              helper.make_node("Mul", ["logits", "temp"], ["scaled"]),
              helper.make_node("Softmax", ["scaled"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "vv"], [out])]


def _shift_model(op: str):
    """y = attention(x); shifted = Pad(y) by one token at the start, cropped at the end;
    mixed = y * m (+ or -) shifted * (1 - m), m per feature."""
    nodes, inits = [], []
    _attention(nodes, inits, "x", "y")
    m = np.linspace(0.2, 0.8, D)
    inits += [_init("m", m), _init("one_minus", 1 - m),
              _init("pads", [0, 1, 0, 0, -1, 0], np.int64)]
    nodes += [helper.make_node("Pad", ["y", "pads"], ["shifted"], mode="constant"),
              helper.make_node("Mul", ["y", "m"], ["now"]),
              helper.make_node("Mul", ["shifted", "one_minus"], ["before"]),
              helper.make_node(op, ["now", "before"], ["mixed"])]
    return make_model(nodes, [_value("x", (N, T, D))], [_value("mixed", (N, T, D))], inits,
                      opset=17)


@pytest.mark.parametrize("op", ["Add", "Sub"])
def test_token_shift_mix_reads_the_lag_one_covariance(op):
    """The attention's tokens correlate strongly: the Add's variance has
    ``+ 2 m (1 - m) Cov(y_t, y_{t-1})`` (the Sub's the same term taken away)."""
    _check(_shift_model(op), ["mixed"])


def _draws_model():
    """y = attention(x); ``2 y_0 - (y_0 + y_1) = y_0 - y_1`` of its first two tokens, whose
    operands share y_0: the joint draws' leaf is y, whose tokens are correlated."""
    nodes, inits = [], []
    _attention(nodes, inits, "x", "y")
    inits += [_init("zero", 0, np.int64), _init("one", 1, np.int64), _init("two", 2.0)]
    nodes += [helper.make_node("Gather", ["y", "zero"], ["y0"], axis=1),
              helper.make_node("Gather", ["y", "one"], ["y1"], axis=1),
              helper.make_node("Mul", ["y0", "two"], ["twice"]),
              helper.make_node("Add", ["y0", "y1"], ["both"]),
              helper.make_node("Sub", ["twice", "both"], ["gap"])]
    return make_model(nodes, [_value("x", (N, T, D))], [_value("gap", (N, D))], inits,
                      opset=17)


def test_joint_draws_of_a_leaf_follow_its_token_field():
    """``Var(y_0 - y_1) = 2 nu (1 - rho)``: small where the tokens share their value (rho 0.6
    here; independent draws: 2.5 times too large)."""
    _check(_draws_model(), ["gap"])
