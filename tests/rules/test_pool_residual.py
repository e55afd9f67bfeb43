"""``AveragePool(x) -/+ x`` (PoolFormer's token mixer ``pool(x) - x``): the pool reads each
position's own value and its neighbours', so the operands are correlated
(rules/pool_residual.py). Predicted against onnxruntime runs. (A global mean of the result is
not checked: its near-cancellation is decided at the border, which the correlation by offset,
taken as stationary, does not hold.)"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.models import make_model
from tests.oracle import monte_carlo, predict


def _model(op: str, side: int, include_pad: int, pool_first: bool, seed: int, n: int = 2000):
    """x [n, 4, side, side] -> Conv 3x3 (padded, correlated neighbours) -> z;
    p = AveragePool 3x3 (stride 1, pad 1) of z; y = p op z (or z op p)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1 / np.sqrt(36), (8, 4, 3, 3)).astype(np.float32)
    operands = ["p", "z"] if pool_first else ["z", "p"]
    nodes = [helper.make_node("Conv", ["x", "w"], ["z"], pads=[1, 1, 1, 1]),
             helper.make_node("AveragePool", ["z"], ["p"], kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1], count_include_pad=include_pad),
             helper.make_node(op, operands, ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, 4, side, side])
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    return make_model(nodes, [x], outs, [numpy_helper.from_array(w, "w")])


@pytest.mark.parametrize("op,side,include_pad,pool_first", [
    ("Sub", 8, 0, True), ("Sub", 2, 0, True), ("Sub", 8, 1, False), ("Add", 6, 0, True)])
def test_pool_and_its_input(op, side, include_pad, pool_first):
    model = _model(op, side, include_pad, pool_first, seed=side)
    moments = {"x": Moments.scalar(0.0, 1.0)}
    _, result = predict(model, moments)
    measured = monte_carlo(model, moments, seed=side)
    truth = measured["y"].astype(np.float64).var(axis=(0, 2, 3)).mean()
    predicted = float(np.mean(result.moments["y"].var))
    assert 0.95 < predicted / truth < 1.05, (predicted, truth)
