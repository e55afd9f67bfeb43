"""The correlation of a row's features (rules/feature_pairs.py) in a mean over the row of
squares: a dense layer's outputs are correlated (``C_y = W^T C_x W``), which a mean square over
them sees as ``2 sum_{d!=e} C_de^2`` more variance; a row normalised by its own root mean square
(RMSNorm written out) has a constant mean square, which a dense layer after it keeps
(``Var[x^T A x] = 2 tr (A C)^2 + excess (tr A C)^2``). Predictions against onnxruntime Monte
Carlo runs of the whole graph."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.oracle import monte_carlo, predict

B, T = 2000, 4
EPS = 1e-6


def _model(weights: np.ndarray, normalise: bool, second: np.ndarray | None = None):
    """x [B, T, K] (RMSNorm over K when ``normalise``) @ W [K, N] (then @ ``second``), its mean
    square over the last axis ``y``."""
    consts = {"w": weights, "two": 2.0, "eps": EPS, "axes": np.array([-1])}
    nodes, x = [], "x"
    if normalise:
        nodes += [helper.make_node("Pow", ["x", "two"], ["n0"]),
                  helper.make_node("ReduceMean", ["n0", "axes"], ["n1"], keepdims=1),
                  helper.make_node("Add", ["n1", "eps"], ["n2"]),
                  helper.make_node("Sqrt", ["n2"], ["n3"]),
                  helper.make_node("Div", ["x", "n3"], ["n"])]
        x = "n"
    nodes.append(helper.make_node("MatMul", [x, "w"], ["h"]))
    if second is not None:
        consts["w2"] = second
        nodes.append(helper.make_node("MatMul", ["h", "w2"], ["h2"]))
    nodes += [helper.make_node("Pow", ["h2" if second is not None else "h", "two"], ["z"]),
              helper.make_node("ReduceMean", ["z", "axes"], ["y"], keepdims=1)]
    graph = helper.make_graph(
        nodes, "feature_pairs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, T, weights.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32), n) if n != "axes"
         else numpy_helper.from_array(v, n) for n, v in consts.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def _check(model, rtol=0.1):
    inputs = {"x": Moments.scalar(0.0, 1.0)}
    _, result = predict(model, inputs)
    y = monte_carlo(model, inputs, seed=3)["y"].astype(np.float64)
    predicted = result.moments["y"].total()[1]
    assert predicted == pytest.approx(y.var(), rel=rtol), (predicted, y.var())


def test_mean_square_of_a_dense_layer_sees_its_output_correlations():
    """K = 32 inputs to N = 256 outputs: squared correlations of about 1/32 over 256 x 255
    pairs, 9x the variance of independent features' mean square."""
    rng = np.random.default_rng(0)
    _check(_model(rng.normal(size=(32, 256)) / np.sqrt(32), normalise=False))


def test_two_dense_layers_compose_their_correlations():
    """A transformer MLP's shape, 128 -> 512 -> 128 (the composition assumes the second
    weight's Gram matrix in generic position to the first's covariance: free probability,
    whose fourth-order traces of one draw of 128-wide weights are within a few % of it)."""
    rng = np.random.default_rng(1)
    _check(_model(rng.normal(size=(128, 512)) / np.sqrt(128), normalise=False,
                  second=rng.normal(size=(512, 128)) / np.sqrt(512)))


def test_a_normalised_row_keeps_a_constant_energy_through_a_dense_layer():
    """RMSNorm then a rank-8 weight: the outputs' mean square varies with the input's
    direction only (its norm is fixed): ``2 tr (A C)^2 + excess (tr A C)^2`` with excess
    ``-2/K``, not the Gaussian's ``2 tr (A C)^2``."""
    rng = np.random.default_rng(2)
    w = rng.normal(size=(64, 8)) @ rng.normal(size=(8, 96)) / np.sqrt(64 * 8)
    _check(_model(w, normalise=True))


def test_a_mean_square_over_tokens_is_not_a_row_normalisation():
    """``y = h / sqrt(mean_t h^2)`` with the mean taken over the tokens of ``[N, T, D]``, T == D:
    its shapes are those of a row's RMS norm, but the rows are not normalised, so a row's mean
    square of y varies (it was read as a row norm's: 0.10x of the measured variance)."""
    n, d = 64, 16
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Mul", ["h", "h"], ["sq"]),
             helper.make_node("ReduceMean", ["sq"], ["ms"], axes=[1], keepdims=1),
             helper.make_node("Add", ["ms", "eps"], ["mse"]),
             helper.make_node("Sqrt", ["mse"], ["rms"]),
             helper.make_node("Div", ["h", "rms"], ["y"]),
             helper.make_node("Mul", ["y", "y"], ["y2"]),
             helper.make_node("ReduceMean", ["y2"], ["z"], axes=[2], keepdims=1)]
    graph = helper.make_graph(
        nodes, "token_rms", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, d, d])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [n, d, 1])],
        [numpy_helper.from_array(w, "w"),
         numpy_helper.from_array(np.array(1e-6, np.float32), "eps")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = Moments(np.zeros((1, 1, d)), np.ones((1, 1, d)))
    _, result = predict(model, {"x": x})
    measured = float(np.var(monte_carlo(model, {"x": x})["z"].astype(np.float64)))
    ratio = result.moments["z"].total()[1] / measured
    assert 0.75 < ratio < 1.33, ratio
