"""Grouped-query attention's merged heads (rules/repeated_heads.py), against onnxruntime: two
key/value heads repeated to four query heads (Unsqueeze, Expand, Reshape: transformers'
``repeat_kv``), each mixed by its own probabilities and merged back into one row of 64
features. The row holds each value feature twice, so its concentration ``tr C^2 / (tr C)^2`` is
the value row's; kept as 64 generic features it read 2/3 of it, and the mean square's variance
(an RMSNorm after the attention output: OLMo-2's and Gemma 2's post-attention norms) 0.64x."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.oracle import monte_carlo, predict

N, T, D, KV, G, DH = 2048, 8, 64, 2, 2, 16


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    i64 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.int64), name)  # noqa: E731
    w = numpy_helper.from_array((rng.standard_normal((D, KV * DH)) / np.sqrt(D)).astype(
        np.float32), "w_v")
    nodes = [
        helper.make_node("MatMul", ["x", "w_v"], ["v"]),
        helper.make_node("Reshape", ["v", "split"], ["v4"]),
        helper.make_node("Transpose", ["v4"], ["vh"], perm=[0, 2, 1, 3]),
        helper.make_node("Unsqueeze", ["vh", "axis2"], ["vu"]),
        helper.make_node("Expand", ["vu", "expanded"], ["ve"]),
        helper.make_node("Reshape", ["ve", "heads"], ["vr"]),
        helper.make_node("Softmax", ["logits"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "vr"], ["o"]),
        helper.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["ot", "merged"], ["row"]),
        helper.make_node("Mul", ["row", "row"], ["sq"]),
        helper.make_node("ReduceMean", ["sq", "last"], ["ms"], keepdims=1),
    ]
    graph = helper.make_graph(
        nodes, "repeated_heads",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, T, D]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, [N, KV * G, T, T])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("row", "ms")],
        [w, i64("split", [N, T, KV, DH]), i64("axis2", [2]), i64("expanded", [N, KV, G, T, DH]),
         i64("heads", [N, KV * G, T, DH]), i64("merged", [N, T, KV * G * DH]),
         i64("last", [-1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


@pytest.mark.parametrize("logits", [0.01, 1.0])
def test_merged_repeated_heads_keep_the_value_rows_concentration(logits):
    """Nearly uniform attention (logits of variance 0.01) and heads whose probabilities differ
    (variance 1): the merged row's variance is right either way; its mean square's variance
    0.64x and 0.70x before, 0.96x and 1.06x now."""
    model = _model()
    inputs = {"x": Moments.scalar(0.0, 1.0), "logits": Moments.scalar(0.0, logits)}
    _, result = predict(model, inputs)
    values = {k: v.astype(np.float64) for k, v in monte_carlo(model, inputs).items()}
    row = result.moments["row"].total()[1] / float(np.var(values["row"]))
    assert abs(row - 1) < 0.05, row
    ms = result.moments["ms"].total()[1] / float(np.var(values["ms"]))
    assert abs(ms - 1) < 0.10, ms
