"""The row mean of a bare dense layer's output (``ReduceMean`` / ``ReduceSum`` over the last
axis of ``x @ W + b``, no square anywhere in the graph): for the weights at hand it is the
linear form ``mean_j y_j = x . u + mean(b)``, ``u = W 1 / E``, so ``Var = u^T C_x u`` and
``E = E[x] . u + mean(b)``, not the independent features' ``mean_j Var y_j / E`` (main: 0.44x
here, 0.62x for a square 16-feature W). The reduce rule now reads the row's field for the
weights at hand (rules/correlated_means.py, rules/channel_covariance.row_covariance). A sum of
squares over the same rows takes that field's quadratic-form cumulants (rules/square_sum_field.py).
Predictions against onnxruntime Monte Carlo runs of the graph and the closed forms in numpy."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.oracle import monte_carlo, predict

B, T, D, E = 512, 4, 24, 32
X_MEAN, X_VAR = 0.4, 1.3


def _model(weights: np.ndarray, bias: np.ndarray, op: str, opset: int):
    """x [B, T, D] @ W [D, E] + b, ``op`` over the last axis (keepdims) ``y``."""
    consts = [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")]
    axes_in_input = opset >= (13 if op == "ReduceSum" else 18)
    if axes_in_input:
        consts.append(numpy_helper.from_array(np.array([-1], np.int64), "axes"))
        reduce = helper.make_node(op, ["h", "axes"], ["y"], keepdims=1)
    else:
        reduce = helper.make_node(op, ["h"], ["y"], axes=[-1], keepdims=1)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["p"]),
             helper.make_node("Add", ["p", "b"], ["h"]), reduce]
    graph = helper.make_graph(
        nodes, "dense_row_mean",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, T, D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=10)


@pytest.mark.parametrize("op,opset", [("ReduceMean", 17), ("ReduceMean", 18),
                                      ("ReduceSum", 13), ("ReduceMean", 9)])
def test_row_mean_of_a_dense_layer_is_its_linear_form(op, opset):
    rng = np.random.default_rng(0)
    # a shared offset in W: the features' covariances sum to 2.3x their trace
    weights = (rng.standard_normal((D, E)) / np.sqrt(D) + 0.05).astype(np.float32)
    bias = (0.2 * rng.standard_normal(E)).astype(np.float32)
    model = _model(weights, bias, op, opset)
    moments = {"x": Moments.scalar(X_MEAN, X_VAR)}
    _, result = predict(model, moments)
    values = monte_carlo(model, moments)["y"].astype(np.float64)
    w = weights.astype(np.float64)
    scale = 1.0 / E if op == "ReduceMean" else 1.0
    u = w.sum(axis=1) * scale
    exact_var = X_VAR * float(u @ u)
    exact_mean = X_MEAN * float(u.sum()) + float(bias.astype(np.float64).sum()) * scale
    independent = X_VAR * float((w * w).sum()) * scale * scale
    assert abs(exact_var / independent - 1) > 0.3  # the case the independent law misses
    mean, var = result.moments["y"].total()
    assert var == pytest.approx(exact_var, rel=1e-3)
    assert mean == pytest.approx(exact_mean, abs=1e-3 * np.sqrt(exact_var))
    assert values.var() == pytest.approx(exact_var, rel=0.08)  # onnxruntime agrees
    assert values.mean() == pytest.approx(exact_mean, abs=0.05 * np.sqrt(exact_var))


def _energy_model(weights: np.ndarray, bias: np.ndarray, rows: int):
    """x [rows, 8, K] @ W + b, its ReduceSumSquare ``s`` and ReduceL2 ``l2`` over the last axis."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["p"]),
             helper.make_node("Add", ["p", "b"], ["h"]),
             helper.make_node("ReduceSumSquare", ["h", "axes"], ["s"], keepdims=0),
             helper.make_node("ReduceL2", ["h", "axes"], ["l2"], keepdims=0)]
    graph = helper.make_graph(
        nodes, "dense_row_energy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, 8, weights.shape[0]])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("s", "l2")],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b"),
         numpy_helper.from_array(np.array([-1], np.int64), "axes")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


@pytest.mark.parametrize("seed", [0, 1])
def test_row_energy_of_a_dense_layer_has_its_covariance(seed):
    """``Q = y^T y``, ``y ~ N(W^T mu_x + b, S)``, ``S = W^T diag(nu_x) W``: ``E Q = tr S +
    |m|^2``, ``Var Q = 2 tr S^2 + 4 m^T S m``; ReduceL2 ``sqrt(Q)`` over the law of those
    cumulants and ``8 tr S^3 + 24 m^T S^2 m`` (the independent features' skewness: 1.11x)."""
    k = 16
    rng = np.random.default_rng(seed)
    weights = (rng.standard_normal((k, k)) / np.sqrt(k)).astype(np.float32)
    bias = (0.1 * rng.standard_normal(k)).astype(np.float32)
    model = _energy_model(weights, bias, 2048)
    moments = {"x": Moments.scalar(0.1, 1.0)}
    _, result = predict(model, moments)
    values = monte_carlo(model, moments)
    w = weights.astype(np.float64)
    s = w.T @ w  # nu_x = 1
    m = 0.1 * w.sum(axis=0) + bias.astype(np.float64)
    q_mean, q_var = float(np.trace(s) + m @ m), float(2 * np.trace(s @ s) + 4 * m @ s @ m)
    mean, var = result.moments["s"].total()
    assert mean == pytest.approx(q_mean, rel=1e-3) and var == pytest.approx(q_var, rel=1e-3)
    assert values["s"].astype(np.float64).var() == pytest.approx(q_var, rel=0.06)
    mean, var = result.moments["l2"].total()
    measured = values["l2"].astype(np.float64)
    assert var == pytest.approx(measured.var(), rel=0.05)
    assert mean == pytest.approx(measured.mean(), abs=0.05 * np.sqrt(measured.var()))


def test_row_mean_of_a_dense_layer_of_layer_norm_rows_sees_their_centring():
    """x -> LayerNormalization -> @ W + b -> ReduceMean over the last axis: the LayerNorm's
    rows sum to zero, ``Cov n = D / (D - 1) P`` (P the centring), so ``Var = D / (D - 1) u^T P
    u``, ``u = W 1 / E``; W's shared offset (along 1) adds nothing. The dense layer's field
    started from the LayerNorm input's variances alone read 7.3x. Within 10%, not exact: the
    reduce rule's independent variance is h's per-feature ``|W_e|^2``, which leaves out the
    centring's ``-(1^T W_e)^2 / D`` (10% of it for this offset; ``1/D`` for zero-mean
    columns), and the field's factor ``1^T S 1 / tr S`` is applied to it."""
    d, e = 48, 64
    rng = np.random.default_rng(1)
    weights = (rng.standard_normal((d, e)) / np.sqrt(d) + 0.05).astype(np.float32)
    bias = (0.1 * rng.standard_normal(e)).astype(np.float32)
    consts = [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b"),
              numpy_helper.from_array(np.ones(d, np.float32), "g"),
              numpy_helper.from_array(np.zeros(d, np.float32), "beta"),
              numpy_helper.from_array(np.array([-1], np.int64), "axes")]
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "beta"], ["n"], axis=-1),
             helper.make_node("MatMul", ["n", "w"], ["p"]),
             helper.make_node("Add", ["p", "b"], ["h"]),
             helper.make_node("ReduceMean", ["h", "axes"], ["y"], keepdims=1)]
    graph = helper.make_graph(
        nodes, "layer_norm_dense_row_mean",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1024, 8, d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    moments = {"x": Moments.scalar(0.3, 2.0)}
    _, result = predict(model, moments)
    values = monte_carlo(model, moments)["y"].astype(np.float64)
    u = weights.astype(np.float64).sum(axis=1) / e
    centred = u - u.mean()
    exact_var = d / (d - 1) * float(centred @ centred)
    mean, var = result.moments["y"].total()
    assert var == pytest.approx(exact_var, rel=0.1)
    assert values.var() == pytest.approx(exact_var, rel=0.03)  # onnxruntime agrees
    assert var == pytest.approx(values.var(), rel=0.1)
    assert mean == pytest.approx(float(bias.mean()), abs=0.05 * np.sqrt(exact_var))
