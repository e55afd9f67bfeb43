"""A LayerNorm written out below opset 17 over the channels of a Conv's tokens (a patch
embedding: Conv, Reshape to [N, C, P], Transpose to [N, P, C], then ReduceMean, Sub, Pow,
ReduceMean, Add eps, Sqrt, Div), against onnxruntime.

The centred tokens ``d = x - mean_c(x)`` were read as the independent sum ``Var x + Var m``;
their pooled variance is ``Var x - Var m`` exactly (each x_c moves the mean it is centred on),
and their square's variance followed (SegFormer at opset 14: 1.14x and 1.29x)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit import analyze

from ..models import make_model

CHANNELS, SIDE = 8, 8


def _patch_norm(seed: int, opset: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    # a shared offset in the kernels makes the channels correlate: Var m well above Var x / C
    w = rng.normal(0, 0.2, (CHANNELS, 3, 3, 3)) + rng.normal(0, 0.1, (1, 3, 3, 3))
    b = rng.normal(0, 0.1, CHANNELS)
    inits = [numpy_helper.from_array(w.astype(np.float32), "w"),
             numpy_helper.from_array(b.astype(np.float32), "b"),
             numpy_helper.from_array(np.array([0, CHANNELS, -1], np.int64), "flat"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array(1e-5, np.float32), "eps")]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["c", "flat"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
        helper.make_node("ReduceMean", ["t"], ["m"], axes=[-1]),
        helper.make_node("Sub", ["t", "m"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["v"], axes=[-1]),
        helper.make_node("Add", ["v", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["s"]),
        helper.make_node("Div", ["d", "s"], ["y"]),
    ]
    return make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits, opset=opset)


def _measured(model: onnx.ModelProto, names, batches: int = 250) -> dict[str, float]:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                              for n in names)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    runs = [session.run(list(names), {"x": rng.normal(size=(8, 3, SIDE, SIDE)).astype(
        np.float32)}) for _ in range(batches)]
    return {n: float(np.var(np.stack([r[i] for r in runs]))) for i, n in enumerate(names)}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("opset", [9, 14])
def test_centred_conv_tokens(seed, opset):
    model = _patch_norm(seed, opset)
    names = ["m", "d", "sq"]
    measured = _measured(model, names)
    predicted = {t.name: t.var for t in analyze(model, batch_size=8).tensors}
    for name in names:
        assert abs(predicted[name] / measured[name] - 1) < 0.06, (
            name, predicted[name], measured[name])
