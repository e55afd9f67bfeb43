"""An RMSNorm that normalises some tokens and only scales others (``rules/token_excess.py``):
OLMo-2's and EXAONE 4's sublayer-output norms at init, where the first tokens' attention output
has a mean square above eps (1.7x eps for OLMo-2's layer-1 token 0) and the later tokens' far
below it. The norm keeps the share ``rho_t^2`` of a token's energy fluctuation, ``rho_t = eps /
(s_t + eps)``, so the output row's energy excess goes from ``-2q`` at the first token to the
input's at the last. A gated MLP on the normalised row reads it per token (its second moment
``r_t^2 (1 + a b e_t / (1 + 2q))``, its energy law ``Q^2`` at ``2q + e_t``), and so does the
mean square of its down projection, the next norm's statistic. Against onnxruntime on Gaussian
rows, each token scaled by its own constant (0.03-3x eps in mean square): that scale is spelled
out per token in the mean square's moments, whose relative variance for the norm's Jensen term
is then each token's own (``rules/row_norm._relative_variance``)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.oracle import monte_carlo, predict

N, T, K, RANK, HIDDEN = 4096, 16, 64, 8, 128
EPS = 1.0


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    low = rng.normal(size=(K, RANK)) @ rng.normal(size=(RANK, K)) / np.sqrt(K * RANK)
    # token t's mean square about 3 eps / (1 + t)^1.3: normalised at t = 0, a scale past t = 4
    scale = np.sqrt(3.0 * EPS / (1.0 + np.arange(T)) ** 1.3).reshape(T, 1)
    weights = {"scale": scale, "low": low,
               "wg": rng.normal(size=(K, HIDDEN)) / np.sqrt(K),
               "wu": rng.normal(size=(K, HIDDEN)) / np.sqrt(K),
               "wd": rng.normal(size=(HIDDEN, K)) / np.sqrt(HIDDEN)}
    f32 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    nodes = [
        helper.make_node("MatMul", ["x", "low"], ["h0"]),
        helper.make_node("Mul", ["h0", "scale"], ["h1"]),
        helper.make_node("Pow", ["h1", "two"], ["sq0"]),
        helper.make_node("ReduceMean", ["sq0", "axes"], ["ms0"], keepdims=1),
        helper.make_node("Add", ["ms0", "eps"], ["mse0"]),
        helper.make_node("Sqrt", ["mse0"], ["rms0"]),
        helper.make_node("Div", ["h1", "rms0"], ["h"]),
        helper.make_node("MatMul", ["h", "wg"], ["g"]),
        helper.make_node("Sigmoid", ["g"], ["sg"]),
        helper.make_node("Mul", ["g", "sg"], ["a"]),
        helper.make_node("MatMul", ["h", "wu"], ["u"]),
        helper.make_node("Mul", ["a", "u"], ["m"]),
        helper.make_node("MatMul", ["m", "wd"], ["y"]),
        helper.make_node("Pow", ["y", "two"], ["sq"]),
        helper.make_node("ReduceMean", ["sq", "axes"], ["ms"], keepdims=1),
    ]
    graph = helper.make_graph(
        nodes, "partial", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, T, K])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("m", "y", "ms")],
        [f32(k, v) for k, v in weights.items()]
        + [f32("two", 2.0), f32("eps", EPS), numpy_helper.from_array(np.array([-1], np.int64),
                                                                      "axes")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def test_a_norm_that_normalises_the_first_tokens_and_scales_the_rest():
    """Before: the norm's output 0.81x (its Jensen term read the mean square's relative variance
    pooled over tokens 30x apart), the product 0.61x, the down projection 0.60x, its mean
    square's variance 0.49x; with each token's own relative variance but the kept share
    weighted by ``s_t^2``: 0.95x, 0.93x, 0.97x; weighted by the output energy but pooled: 1.01x,
    0.98x, 1.34x (the pooled excess, right for the product's second moment, overstates its
    energy law at the first tokens, which its mean square weights most); token by token: 1.00x,
    0.98x, 1.11x."""
    model = _model()
    x = {"x": Moments.scalar(0.0, 1.0)}
    _, result = predict(model, x)
    values = monte_carlo(model, x)
    for name, tolerance in (("m", 0.04), ("y", 0.04), ("ms", 0.15)):
        got = float(np.var(values[name].astype(np.float64)))
        ratio = result.moments[name].total()[1] / got
        assert abs(ratio - 1) < tolerance, (name, ratio)
