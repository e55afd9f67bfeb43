"""The row mean of a residual sum ``s = h + f`` whose h is a LayerNorm's output written out
(TorchScript below opset 17: the next norm's ``ReduceMean(s)``): h's rows sum to a constant,
so ``mean(s) = beta + mean(f)`` and its variance is f's row mean's alone. The rule on s read h's
D-fold variance cancelling against its Pairs' ``signed`` beside f's small one (SegFormer's
``layernorm_after`` at opset 14: 12-118x the measured, BERT's first post-norm 12.5x).
Predicted against a Monte Carlo run of the same graph in onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.models import make_model
from tests.oracle import monte_carlo, predict

from .test_fixed_energy_rows import _layer_norm


def _model(seed: int, terms: int, n: int = 400, tokens: int = 8, d: int = 16, opset: int = 14):
    """x [n, T, D] -> h = LayerNorm(x + pos) written out (an embedding's independent features;
    gamma 1, beta 0.3) -> s = h + f_0 (+ f_1), f_0 = h W_0 of scale 0.05 (a post-norm block's
    sublayer, linear), f_1 = 0.05 z of a second input z (a term independent of f_0) -> ``bm``,
    the next norm's row mean of s.
    Not tested here: two terms that both read h (a pre-norm block's attention and MLP, their
    row means correlated through h, which the rule takes as independent), and a nonlinear
    sublayer, whose row mean ``u^T C u`` the Pairs read from the mean correlation of its
    features alone (a wide tanh layer of 16 inputs: 0.3-1.5x by the weights' draw)."""
    rng = np.random.default_rng(seed)
    inits = {"pos": rng.normal(0, 0.7, (tokens, d)),
             "gamma": np.ones(d), "beta": np.full(d, 0.3), "two": np.array(2.0),
             "eps": np.array(1e-5)}
    nodes = [helper.make_node("Add", ["x", "pos"], ["t"])]
    h = _layer_norm("a", "t", nodes)
    s = h
    inits["w0"] = rng.normal(0, 0.05 / np.sqrt(d), (d, d))
    inits["c"] = np.array(0.05)
    nodes += [helper.make_node("MatMul", [h, "w0"], ["f0"]),
              helper.make_node("Add", [h, "f0"], ["s0"])]
    s = "s0"
    if terms == 2:
        nodes += [helper.make_node("Mul", ["z", "c"], ["f1"]),
                  helper.make_node("Add", ["s0", "f1"], ["s1"])]
        s = "s1"
    _layer_norm("b", s, nodes)
    x = [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, tokens, d])
         for k in ("x", "z")[:terms]]
    out = [helper.make_tensor_value_info("bm", TensorProto.FLOAT, None)]
    return make_model(nodes, x, out, [numpy_helper.from_array(v.astype(np.float32), k)
                                        for k, v in inits.items()], opset=opset)


@pytest.mark.parametrize("seed,terms,opset", [(0, 1, 14), (1, 1, 11), (5, 1, 9), (6, 2, 11)])
def test_row_mean_of_a_normalised_row_plus_a_sublayer(seed, terms, opset):
    model = _model(seed, terms, opset=opset)
    moments = {k: Moments.scalar(0.0, 1.0) for k in ("x", "z")[:terms]}
    _, result = predict(model, moments)
    measured = monte_carlo(model, moments, seed=seed)["bm"].astype(np.float64)
    m = result.moments["bm"]
    predicted = float(np.mean(m.var) + np.var(np.broadcast_to(m.mean, measured.shape)))
    assert 0.9 < predicted / float(np.var(measured)) < 1.1
    assert abs(float(np.mean(m.mean)) - float(np.mean(measured))) < 0.01
