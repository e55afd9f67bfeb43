"""The row field of ``x - mean(x)`` (a LayerNorm written out, TorchScript at opset < 17) is
``P S P``: its rows sum to zero. A post-norm transformer (BERT, DistilBERT, ELECTRA, ALBERT
exported at opset 14) takes the row mean of ``LayerNorm(h) + dense(...)``, whose only varying
part is the dense output's. The field of the centred rows was the sum rule's ``S_x + S_mean``
(as if x and its mean were independent): the row mean came out 1e4-1e5x the measured one.
Predicted against onnxruntime runs."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.models import make_model
from tests.oracle import monte_carlo, predict


def _post_norm_model(seed: int, n: int = 400, tokens: int = 8, d: int = 32):
    """x [n, T, D] -> t = x W_e (a dense embedding of correlated features) -> the LayerNorm
    written out: h = (t - mean(t)) / sqrt(mean((t - mean(t))^2) + eps); then
    s = h + (h W_1) W_2 and its row mean ``m`` over the last axis."""
    rng = np.random.default_rng(seed)
    inits = {"we": rng.normal(0, 1 / np.sqrt(d), (d, d)).astype(np.float32),
             "w1": rng.normal(0, 0.1 / np.sqrt(d), (d, d)).astype(np.float32),
             "w2": rng.normal(0, 1 / np.sqrt(d), (d, d)).astype(np.float32),
             "two": np.array(2.0, np.float32), "eps": np.array(1e-12, np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "we"], ["t"]),
             helper.make_node("ReduceMean", ["t"], ["tm"], axes=[-1]),
             helper.make_node("Sub", ["t", "tm"], ["c"]),
             helper.make_node("Pow", ["c", "two"], ["c2"]),
             helper.make_node("ReduceMean", ["c2"], ["v"], axes=[-1]),
             helper.make_node("Add", ["v", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Div", ["c", "sd"], ["h"]),
             helper.make_node("MatMul", ["h", "w1"], ["f1"]),
             helper.make_node("MatMul", ["f1", "w2"], ["f"]),
             helper.make_node("Add", ["h", "f"], ["s"]),
             helper.make_node("ReduceMean", ["s"], ["m"], axes=[-1])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, tokens, d])
    outs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("c", "m")]
    return make_model(nodes, [x], outs, [numpy_helper.from_array(v, k) for k, v in inits.items()],
                      opset=14)


@pytest.mark.parametrize("seed", [0, 1])
def test_row_mean_of_a_post_norm_residual_sum(seed):
    model = _post_norm_model(seed)
    moments = {"x": Moments.scalar(0.0, 1.0)}
    _, result = predict(model, moments)
    measured = monte_carlo(model, moments, seed=seed)
    assert float(np.var(measured["c"].mean(axis=-1))) < 1e-12  # the centred rows sum to 0
    predicted = float(np.mean(result.moments["m"].var))
    truth = float(np.var(measured["m"].astype(np.float64)))
    assert 0.8 < predicted / truth < 1.25, (predicted, truth)
