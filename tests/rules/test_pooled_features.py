"""rules/pooled_features.py against onnxruntime: a dense layer after the global average pool of
structured sparse convs (IDInit's patch identity, a same-sign sparse kernel) on white noise.
Its output sums pooled channels that share pixels; their covariance, which the per-channel
rules leave out, is most of the output's variance within a batch."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.methods.idinit import padded_identity
from onnxinit.moments import Moments

from ..models import make_model
from ..oracle import monte_carlo, predict

BATCH = 4000


def _model(op: str, pool: str):
    rng = np.random.default_rng(5)
    wa = padded_identity(8, 27).reshape(8, 3, 3, 3)
    wb = np.zeros((8, 72))
    for j in range(8):
        wb[j, rng.choice(72, 4, replace=False)] = rng.uniform(0.5, 1.0, 4)
    wb = wb.reshape(8, 8, 3, 3)
    fc = padded_identity(3, 8)  # [3, 8]: output j sums channels j, j + 3, j + 6
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ra"]),
        helper.make_node("Conv", ["ra", "wb"], ["b"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["b"], ["rb"]),
    ]
    if pool == "GlobalAveragePool":
        nodes.append(helper.make_node("GlobalAveragePool", ["rb"], ["g"]))
    else:
        nodes.append(helper.make_node("ReduceMean", ["rb", "axes"], ["g"], keepdims=1))
    nodes.append(helper.make_node("Flatten", ["g"], ["f"]))
    inits = {"wa": wa, "wb": wb}
    if op == "Gemm":
        nodes.append(helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1))
        inits["fc"] = fc
    else:
        nodes.append(helper.make_node("MatMul", ["f", "fc"], ["y"]))
        inits["fc"] = fc.T.copy()
    initializers = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()]
    initializers.append(numpy_helper.from_array(np.array([2, 3], np.int64), "axes"))
    return make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)


@pytest.mark.parametrize("op, pool", [("Gemm", "GlobalAveragePool"), ("MatMul", "ReduceMean")])
def test_dense_layer_after_a_pool_of_correlated_channels(op, pool):
    model = _model(op, pool)
    moments = {"x": Moments.scalar(0.0, 1.0)}
    _, result = predict(model, moments)
    y = monte_carlo(model, moments, seed=2)["y"].astype(np.float64)
    measured = y.var(axis=0)
    predicted = np.broadcast_to(np.ravel(result.moments["y"].var), measured.shape)
    # the channels alone (no cross terms) give a third to a half of it (0.31-0.47x); with them 0.88-0.91x:
    # the pool's own variance is 8-10% low (the ReLU field's Mehler series is cut after 8 terms,
    # which loses 0.01-0.05 of the correlations above 0.5)
    np.testing.assert_allclose(predicted, measured, rtol=0.13)
