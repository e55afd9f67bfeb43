"""Values of an element-wise chain centred on their mean over a short axis (tf2onnx's
``reduce_std`` / ``reduce_variance`` over a sequence: ReduceMean, Sub, Mul(d, d), ReduceMean,
Sqrt), against onnxruntime.

The centred values ``d = x - mean_t(x)`` kept x's law shifted, ``Var d = Var x``: each x_t
moves the mean it is centred on (``Var d = Var x - Var m`` on average over the axis), and the
rest of the mean adds a nearly Gaussian part (:mod:`onnxinit.rules.centred_law`). Main: the
square's variance 1.11x over 32 steps of ReLU values (Keras ``reduce_std`` of a Dense ReLU
sequence: 1.10x), 1.47x over 8 ReLU steps, 2.2x over 4; 0.61x for the root over 4 tanh steps."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit import analyze

from ..models import make_model

FEATURES, WIDTH = 16, 64


def _sequence_std(seed: int, steps: int, act: str) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1 / np.sqrt(FEATURES), (FEATURES, WIDTH))
    inits = [numpy_helper.from_array(w.astype(np.float32), "w")]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node(act, ["h"], ["a"]),
        helper.make_node("ReduceMean", ["a"], ["m"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["a", "m"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["v"], axes=[1], keepdims=0),
        helper.make_node("Sqrt", ["v"], ["y"]),
    ]
    return make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, steps, FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits, opset=13)


def _measured(model: onnx.ModelProto, names, steps: int, batches: int = 200) -> dict:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                              for n in names)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(11)
    runs = [session.run(list(names), {"x": rng.normal(size=(8, steps, FEATURES)).astype(
        np.float32)}) for _ in range(batches)]
    return {n: float(np.var(np.concatenate([r[i] for r in runs]).astype(np.float64)))
            for i, n in enumerate(names)}


@pytest.mark.parametrize("seed,steps,act", [(0, 32, "Relu"), (1, 8, "Tanh"), (2, 8, "Relu"),
                                            (6, 4, "Relu")])
def test_centred_sequence_against_onnxruntime(seed, steps, act):
    model = _sequence_std(seed, steps, act)
    names = ["d", "sq", "v"]
    measured = _measured(model, names, steps)
    predicted = {t.name: t.var for t in analyze(model, batch_size=8).tensors}
    for name in names:
        assert predicted[name] == pytest.approx(measured[name], rel=0.06), name
