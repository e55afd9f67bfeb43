"""A sum of a tensor B and a tensor that still holds B's values (``rules/skip_share.py``):
Funnel's decoder adds the upsampled last block to the first block's output, PoolFormer's token
mixer subtracts the map from its average pool. Both operands were taken as independent: the
Funnel-like sum below read 0.71x of its measured variance, the pool's difference 1.33x (1.29-1.64x
on PoolFormer). Against onnxruntime on the same graph; a plain residual sum, whose branch
reaches its input through a weight, is left as it was."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from onnxinit.rules.skip_share import IDENTITY_OPS
from tests.models import make_model
from tests.oracle import OPSET, monte_carlo, predict

B, S, D = 32, 16, 24


def _measured(model, moments, names, runs=8):
    values = [monte_carlo(model, moments, seed=seed) for seed in range(runs)]
    return {n: float(np.var(np.concatenate([v[n].astype(np.float64) for v in values])))
            for n in names}


def _funnel_like():
    """x [B, S, D] -> mean pool of token pairs (Unsqueeze, AveragePool (2, 1), Squeeze) plus an
    independent branch -> LayerNorm -> each token repeated twice (Unsqueeze, Tile, Reshape)
    -> plus x; and a plain residual sum x + x W."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    inits = {
        "ax1": np.array([1], np.int64), "tiles": np.array([1, 1, 2, 1], np.int64),
        "ax2": np.array([2], np.int64), "back": np.array([B, S, D], np.int64),
        "gamma": np.ones(D, f32), "beta": np.zeros(D, f32),
        "w": rng.normal(0, D ** -0.5, (D, D)).astype(f32),
    }
    node = helper.make_node
    nodes = [
        node("Unsqueeze", ["x", "ax1"], ["x4"]),
        node("AveragePool", ["x4"], ["p4"], kernel_shape=[2, 1], strides=[2, 1]),
        node("Squeeze", ["p4", "ax1"], ["pooled"]),
        node("Add", ["pooled", "branch"], ["mixed"]),
        node("LayerNormalization", ["mixed", "gamma", "beta"], ["normed"], axis=-1),
        node("Unsqueeze", ["normed", "ax2"], ["n4"]),
        node("Tile", ["n4", "tiles"], ["t4"]),
        node("Reshape", ["t4", "back"], ["up"]),
        node("Add", ["up", "x"], ["y"]),
        node("MatMul", ["x", "w"], ["xw"]),
        node("Add", ["x", "xw"], ["residual"]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, S, D]),
              helper.make_tensor_value_info("branch", TensorProto.FLOAT, [B, S // 2, D])]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
               for n in ("up", "y", "residual")]
    return make_model(nodes, inputs, outputs,
                      [numpy_helper.from_array(v, k) for k, v in inits.items()], opset=OPSET)


def test_upsampled_pool_plus_its_source_against_onnxruntime():
    """Each repeated token is LN(mean of two of x's tokens + branch): it keeps 1/2 of one of x's
    tokens, scaled by the norm: Cov = 0.5 / sqrt(0.5 + 0.5) per element, the sum 2 + 2 Cov."""
    model = _funnel_like()
    moments = {"x": Moments.scalar(0.0, 1.0), "branch": Moments.scalar(0.0, 1.0)}
    _, result = predict(model, moments)
    measured = _measured(model, moments, ["up", "y", "residual"])
    for name in ("up", "y", "residual"):
        assert result.moments[name].total()[1] == pytest.approx(measured[name], rel=0.05), name


def test_a_map_less_its_average_pool_against_onnxruntime():
    """PoolFormer's ``AvgPool(x) - x`` (3x3, stride 1, padded, count_include_pad=0): the pool
    holds x's own value with weight 1/9 (1/4 to 1/6 at the borders)."""
    shape = [16, 4, 8, 8]
    model = make_model(
        [helper.make_node("AveragePool", ["x"], ["pool"], kernel_shape=[3, 3], strides=[1, 1],
                          pads=[1, 1, 1, 1], count_include_pad=0),
         helper.make_node("Sub", ["pool", "x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], opset=OPSET)
    moments = {"x": Moments.scalar(0.0, 1.0)}
    _, result = predict(model, moments)
    assert result.rules["y"] == "binary"
    assert result.moments["y"].total()[1] == pytest.approx(
        _measured(model, moments, ["y"])["y"], rel=0.05)


def test_weighted_ops_end_the_walk():
    """A branch through a weight (MatMul, Conv, Gemm, Einsum) holds no copy of its input."""
    assert not {"MatMul", "Conv", "Gemm", "Einsum", "ConvTranspose"} & IDENTITY_OPS
