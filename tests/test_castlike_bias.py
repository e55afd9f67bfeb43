"""torch.onnx's dynamo exporter with ``optimize=False`` writes each bias-free Conv's zero bias as
``Expand(CastLike(Constant 0, x), Shape(weight)[0:1])``: CastLike reads ``x`` for its type only,
so the bias is a constant (structure._classify_tensors, folded_values). Taken for a signal, the
Conv went to the empirical fallback and the zero bias, "a signal of variance 0" on the main
path, made `check` report ONNXINIT002 (vanishing) on a healthy BatchNorm ResNet-50. Against
onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxinit import check
from onnxinit.analysis import analyze
from onnxinit.runtime import make_session

N, C, S = 16, 8, 8


def _model() -> onnx.ModelProto:
    """x [N, 4, S, S] -> Conv 3x3 (zero bias through CastLike) -> BatchNormalization (batch
    statistics) -> Relu -> Conv 3x3 (the same bias pattern) -> y."""
    rng = np.random.default_rng(0)
    consts = {"w0": rng.standard_normal((C, 4, 3, 3)) * np.sqrt(2 / 36),
              "w1": rng.standard_normal((C, C, 3, 3)) * np.sqrt(2 / (9 * C)),
              "gamma": np.ones(C), "beta": np.zeros(C), "rmean": np.zeros(C), "rvar": np.ones(C)}
    nodes = [helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(
        np.array(0.0, dtype=np.float32))),
             helper.make_node("Constant", [], ["one"], value_ints=[1])]
    t = "x"
    for i in range(2):
        nodes += [helper.make_node("Shape", [f"w{i}"], [f"ws{i}"], start=0, end=1),
                  helper.make_node("Expand", [f"ws{i}", "one"], [f"n{i}"]),
                  helper.make_node("CastLike", ["zero", t], [f"z{i}"]),
                  helper.make_node("Expand", [f"z{i}", f"n{i}"], [f"b{i}"]),
                  helper.make_node("Conv", [t, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1])]
        t = f"c{i}"
        if i == 0:
            nodes += [helper.make_node("BatchNormalization", ["c0", "gamma", "beta", "rmean",
                                                              "rvar"], ["bn", "m", "v"],
                                       training_mode=1),
                      helper.make_node("Relu", ["bn"], ["r"])]
            t = "r"
    graph = helper.make_graph(
        nodes, "castlike_bias", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                [N, 4, S, S])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("c0", "c1")],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def test_castlike_zero_bias_is_a_constant():
    model = _model()
    analysis = analyze(model)
    predicted = {t.name: t.var for t in analysis.tensors}
    assert "z0" not in predicted and "b1" not in predicted  # constants, not signals
    session = make_session(model, device="cpu", optimize=False)
    rng = np.random.default_rng(1)
    runs = [session.run(["c0", "c1"], {"x": rng.standard_normal((N, 4, S, S)).astype(np.float32)})
            for _ in range(16)]
    for i, name in enumerate(("c0", "c1")):
        measured = float(np.var(np.stack([r[i] for r in runs]).astype(np.float64)))
        assert abs(predicted[name] / measured - 1) < 0.1, (name, predicted[name], measured)
    assert check.find(analysis) == []
