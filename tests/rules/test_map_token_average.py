"""Attention over the tokens of a batch-normalized depthwise Conv map (CvT's convolutional
projections): each sample's tokens are correlated by the kernel (:mod:`onnxinit.rules.map_tokens`)
and, after a training-mode BatchNormalization, share the negative covariance of the batch mean
it subtracts (a sample's mean keeps ``1 - 1/N`` of its variance); a near-uniform softmax
averages them, so ``P V`` reads their sum. P V written as MatMul and as Einsum. Predicted
against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.models import make_model
from tests.oracle import monte_carlo, predict

N, C, SIDE, RUNS = 8, 16, 8, 300  # the batch of a BatchNorm's statistics: 8
T = SIDE * SIDE


def _model(op: str, seed: int):
    """x -> depthwise Conv 3x3 -> BatchNorm (training) -> [N, C, T] -> [N, T, C] = V;
    P = Softmax(q / 8) [N, T, T] of an independent input; O = P V."""
    rng = np.random.default_rng(seed)
    k = (rng.standard_normal((C, 1, 3, 3)) / 3).astype(np.float32)
    ones, zeros = np.ones(C, np.float32), np.zeros(C, np.float32)
    inits = [numpy_helper.from_array(a, n) for n, a in
             {"k": k, "g": ones, "b": zeros, "shape": np.array([N, C, T], np.int64),
              "scale": np.array(0.125, np.float32)}.items()]
    nodes = [helper.make_node("Conv", ["x", "k"], ["h"], group=C, pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["h", "g", "b", "b", "g"],
                              ["hn", "m1", "v1"], training_mode=1, momentum=1.0),
             helper.make_node("Reshape", ["hn", "shape"], ["flat"]),
             helper.make_node("Transpose", ["flat"], ["v"], perm=[0, 2, 1]),
             helper.make_node("Mul", ["q", "scale"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["p"], axis=-1)]
    if op == "Einsum":
        nodes.append(helper.make_node("Einsum", ["p", "v"], ["y"], equation="bts,bsd->btd"))
    else:
        nodes.append(helper.make_node("MatMul", ["p", "v"], ["y"]))
    xs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, C, SIDE, SIDE]),
          helper.make_tensor_value_info("q", TensorProto.FLOAT, [N, T, T])]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y",)]
    moments = {"x": Moments.scalar(0.0, 1.0), "q": Moments.scalar(0.0, 1.0)}
    return make_model(nodes, xs, outs, inits), moments


@pytest.mark.parametrize("op", ["MatMul", "Einsum"])
@pytest.mark.parametrize("seed", [0, 1])
def test_token_average_of_batch_normalized_map(op, seed):
    model, moments = _model(op, seed)
    _, result = predict(model, moments)
    # momentum 1: onnxruntime normalizes with the batch's own statistics
    y = np.stack([monte_carlo(model, moments, seed=s)["y"] for s in range(RUNS)]).astype(
        np.float64)  # [RUNS, N, T, C]
    # tokens taken as independent (Einsum before: 1.15-1.46x), or without the batch
    # centring (MatMul before: 1.15-1.18x); with both 1.02-1.03x
    np.testing.assert_allclose(result.moments["y"].total()[1], y.var(), rtol=0.05)
