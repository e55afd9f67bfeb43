"""Predictions do not depend on the weights' scale (rules/covariance_maps.cross_term_factor).

SAM's and BLIP's vision towers initialise their weights with std 1e-10 (the configs' default
``initializer_range``): a dense layer after another then reads variances of 1e-31 through
weights of 1e-10, and the feature-covariance factor, computed with float32 products, underflowed
to 0 (every product below float32's smallest number): the layer's predicted variance was 0
(measured 2e-49). The factor against float64 numpy (it fails on the old code), and a stack of
dense layers with weights of std 1e-12 against onnxruntime Monte Carlo runs."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from onnxinit.rules.covariance_maps import conv_same_tap, cross_term_factor, pointwise_field
from tests.oracle import monte_carlo, predict

B, S, D = 64, 16, 64


def _model(scale: float):
    """x ~ N(0, 1) [B, S, D] -> h = x W1 -> y = h W2 -> z = y W3, weights of std ``scale``."""
    rng = np.random.default_rng(0)
    consts = {f"w{i}": rng.normal(size=(D, D)) * scale for i in (1, 2, 3)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("MatMul", ["h", "w2"], ["y"]),
             helper.make_node("MatMul", ["y", "w3"], ["z"])]
    inits = [numpy_helper.from_array(np.asarray(v, dtype=np.float32), n) for n, v in consts.items()]
    graph = helper.make_graph(
        nodes, "tiny_weights", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, S, D])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("h", "y", "z")],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("scale", [0.1, 1e-12])
def test_stacked_dense_layers_with_tiny_weights(scale):
    model = _model(scale)
    inputs = {"x": Moments.scalar(0.0, 1.0)}
    _, result = predict(model, inputs)
    values = monte_carlo(model, inputs, seed=3)
    for name in ("h", "y", "z"):
        _, var = result.moments[name].total()
        measured = float(np.var(values[name].astype(np.float64)))
        assert measured > 0, name
        assert var == pytest.approx(measured, rel=0.1), name


@pytest.mark.parametrize("w_scale, s_scale", [(1.0, 1.0), (1e-10, 1e-31), (1e-10, 1e-20),
                                              (1e12, 1e20)])
def test_cross_term_factor_does_not_depend_on_the_scale(w_scale, s_scale):
    """``w_j^T S w_j / sum_m W_jm^2 S_mm`` against float64 numpy: 0 at SAM's scales before
    (weights 1e-10 on variances 1e-31), the same factor at every scale now."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=(D, D))
    s = (a @ a.T / D + np.eye(D)) * s_scale  # a correlated row
    w = rng.normal(size=(32, D)) * w_scale
    expected = np.einsum("jm,mn,jn->j", w, s, w) / ((w * w) @ np.diag(s))
    np.testing.assert_allclose(cross_term_factor(s, w), expected, rtol=1e-4)


@pytest.mark.parametrize("groups, kernel", [(1, 3), (1, 1), (2, 3)])
@pytest.mark.parametrize("w_scale, s_scale", [(1.0, 1.0), (1e-10, 1e-36), (1e12, 1e20)])
def test_conv_fields_do_not_depend_on_the_scale(groups, kernel, w_scale, s_scale):
    """``sum_t W_t S_x W_t^T`` of a Conv (and ``W S_x W^T`` of a 1x1 Conv) against float64
    numpy: 0 before at SAM's neck (variances 1e-36 through weights 1e-10), whose LayerNorm then
    predicted 6e-103 for a measured 2e-42."""
    rng = np.random.default_rng(2)
    c = 8
    a = rng.normal(size=(c, c))
    s = (a @ a.T / c + np.eye(c)) * s_scale
    w = rng.normal(size=(c, c // groups, kernel, kernel)) * w_scale
    expected = np.zeros((c, c))
    per = c // groups
    for t in range(kernel * kernel):
        wt = np.zeros((c, c))  # block-diagonal over the groups
        for g in range(groups):
            rows, cols = slice(g * per, (g + 1) * per), slice(g * per, (g + 1) * per)
            wt[rows, cols] = w[rows, :, t // kernel, t % kernel]
        expected += wt @ s @ wt.T
    np.testing.assert_allclose(conv_same_tap(s, w, groups), expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())
    if kernel == 1 and groups == 1:
        np.testing.assert_allclose(pointwise_field(w, s), expected, rtol=1e-4,
                                   atol=1e-4 * np.abs(expected).max())
