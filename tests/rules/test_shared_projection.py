"""A product of two linear images of one row (``rules/shared_projection.py``): a projection of
a row times the row itself (Mamba's ``B_t[s] u_t[d]``, ``B = u W_B``), with a step factor and
layout ops between them, and a sum over tokens that adds the cells' means up; and a product of
two projections of one row laid out on a (column, column) grid. Against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit import analyze
from tests.models import make_model
from tests.real.compare import predicted_and_measured

N, T, D, S = 64, 16, 8, 6  # batch, tokens, features, states


def _init(name, array, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(array, dtype=dtype), name)


def _value(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _selective_input(mean: float, step: bool):
    """x [N, D, T] (+ ``mean``) moved to tokens [N, T, D] and projected: b = tokens W_B
    [N, T, S]; the product du[n, d, t, s] = (dt[n, d, t] b[n, t, s]) x[n, d, t] on
    [N, D, T, S] (dt = Softplus of an independent input, when ``step``), and its sum over the
    tokens, [N, D, S]: a scan's state without decay."""
    rng = np.random.default_rng(3)
    inits = [_init("w_b", rng.standard_normal((D, S)) / np.sqrt(D)), _init("shift", mean),
             _init("one", [1], np.int64), _init("last", [-1], np.int64),
             _init("tokens_axis", [2], np.int64)]
    nodes = [helper.make_node("Add", ["x", "shift"], ["u"]),
             helper.make_node("Transpose", ["u"], ["tokens"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["tokens", "w_b"], ["b"]),
             helper.make_node("Unsqueeze", ["b", "one"], ["b4"]),  # [N, 1, T, S]
             helper.make_node("Unsqueeze", ["u", "last"], ["u4"])]  # [N, D, T, 1]
    inputs = [_value("x", (N, D, T))]
    if step:
        nodes += [helper.make_node("Softplus", ["z"], ["dt"]),
                  helper.make_node("Unsqueeze", ["dt", "last"], ["dt4"]),
                  helper.make_node("Mul", ["dt4", "b4"], ["db"])]
        inputs.append(_value("z", (N, D, T)))
        product = ["db", "u4"]
    else:
        product = ["b4", "u4"]
    nodes += [helper.make_node("Mul", product, ["du"]),
              helper.make_node("ReduceSum", ["du", "tokens_axis"], ["state"], keepdims=0)]
    model = make_model(nodes, inputs, [_value("state", (N, D, S))], inits, opset=17)
    return model, ["du", "state"]


@pytest.mark.parametrize("mean,step", [(0.0, False), (0.5, False), (0.3, True)])
def test_projection_times_its_own_row(mean, step):
    """E[b[s] u[d]] = W_B[d, s] Var u[d] + E b[s] E u[d]: each (feature, state) cell has its
    own mean, which the sum over 16 tokens adds up 16 times (its variance only 16 times):
    the state's variance is mostly the spread of those means (4-6x of what the independent
    product gave)."""
    model, names = _selective_input(mean, step)
    predicted, measured = predicted_and_measured(model, names, N, runs=16)
    for name in names:
        p, (m_mean, m_var) = predicted[name], measured[name]
        assert p.var == pytest.approx(m_var, rel=0.1), (name, p.var, m_var)
        assert p.mean == pytest.approx(m_mean, rel=0.1, abs=0.1 * np.sqrt(m_var)), name


def test_two_projections_of_one_row_on_a_column_grid():
    """g = x W_1 [N, T, K1], h = x W_2 [N, T, K2], g[..., :, None] * h[..., None, :] summed
    over tokens: cell (i, j) has the mean sum_d W_1[d, i] W_2[d, j] Var x[d], added up 16
    times."""
    rng = np.random.default_rng(4)
    k1, k2 = 5, 7
    inits = [_init("w1", rng.standard_normal((D, k1)) / np.sqrt(D)),
             _init("w2", rng.standard_normal((D, k2)) / np.sqrt(D)),
             _init("last", [-1], np.int64), _init("before", [-2], np.int64),
             _init("tokens_axis", [1], np.int64)]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["g"]),
             helper.make_node("MatMul", ["x", "w2"], ["h"]),
             helper.make_node("Unsqueeze", ["g", "last"], ["g4"]),  # [N, T, K1, 1]
             helper.make_node("Unsqueeze", ["h", "before"], ["h4"]),  # [N, T, 1, K2]
             helper.make_node("Mul", ["g4", "h4"], ["gh"]),
             helper.make_node("ReduceSum", ["gh", "tokens_axis"], ["outer"], keepdims=0)]
    model = make_model(nodes, [_value("x", (N, T, D))], [_value("outer", (N, k1, k2))], inits,
                       opset=17)
    names = ["gh", "outer"]
    predicted, measured = predicted_and_measured(model, names, N, runs=16)
    for name in names:
        p, (_, m_var) = predicted[name], measured[name]
        assert p.var == pytest.approx(m_var, rel=0.1), (name, p.var, m_var)


def _expanded_input():
    """u = SiLU(x W_in) [N, E, T] with x [N, T, 8] widened to E = 16 features (rank 8 of 16:
    far from independent, Mamba's expansion), then as in :func:`_selective_input` without the step: the product
    (u^T W_B)[t, s] u[d, t] and its sum over the tokens."""
    rng = np.random.default_rng(5)
    width = 16
    inits = [_init("w_in", rng.standard_normal((8, width)) / np.sqrt(8)),
             _init("w_b", rng.standard_normal((width, S)) / np.sqrt(width)),
             _init("one", [1], np.int64), _init("last", [-1], np.int64),
             _init("tokens_axis", [2], np.int64)]
    nodes = [helper.make_node("MatMul", ["x", "w_in"], ["z"]),
             helper.make_node("Transpose", ["z"], ["zt"], perm=[0, 2, 1]),  # [N, E, T]
             helper.make_node("Sigmoid", ["zt"], ["gate"]),
             helper.make_node("Mul", ["zt", "gate"], ["u"]),
             helper.make_node("Transpose", ["u"], ["tokens"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["tokens", "w_b"], ["b"]),
             helper.make_node("Unsqueeze", ["b", "one"], ["b4"]),
             helper.make_node("Unsqueeze", ["u", "last"], ["u4"]),
             helper.make_node("Mul", ["b4", "u4"], ["du"]),
             helper.make_node("ReduceSum", ["du", "tokens_axis"], ["state"], keepdims=0)]
    return make_model(nodes, [_value("x", (N, T, 8))], [_value("state", (N, width, S))], inits,
                      opset=17)


def test_projection_of_a_widened_row_reads_its_covariance():
    """Cov(b[s], u[d]) = (Sigma_u W_B)[d, s]: u's 16 features come from 8, so the cross terms
    sum_{d' != d} W_B[d', s] Cov(u[d'], u[d]) are as large as the diagonal one. The row's
    covariance is the dense layer's W^T diag(nu) W through the Transposes and the SiLU
    (Mehler's formula), ``channel_covariance.row_covariance``: each (feature, state) cell's
    mean of the sum over tokens, against onnxruntime's (the cells' own variances are left:
    ``du``'s 0.73x of measured, fourth-order terms of a non-Gaussian row)."""
    model = _expanded_input()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    states = [session.run(["state"], {"x": rng.standard_normal((N, T, 8)).astype(np.float32)})[0]
              for _ in range(16)]
    measured = np.concatenate(states).astype(np.float64).mean(axis=0)  # [E, S]
    noise = np.sqrt(np.concatenate(states).var(axis=0).mean() / (16 * N))
    moments = analyze(model).propagation.moments["state"]
    predicted = np.broadcast_to(moments.mean, (1,) + measured.shape)[0]
    error = np.sqrt(np.mean((predicted - measured) ** 2))
    assert error < 0.1 * np.sqrt(np.mean(measured**2)) + 2 * noise, (error, noise)
