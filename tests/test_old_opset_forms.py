"""Opset-9 forms of real TorchScript exports, against onnxruntime and numpy.

- Head splits whose target shapes are ``Shape -> Gather -> Unsqueeze(axes=...) -> Concat``:
  onnx's data propagation does not go through Unsqueeze's attribute form, so each layer's
  Reshape waits for a folding round of ``ModelGraph._refine_shapes``; a network deeper than the
  rounds allowed left its last layers without shapes, their rules passed the statistics
  through (MobileViT at opset 9: an attention Softmax 1.6e-3 predicted, 9e-8 measured).
- A training-mode BatchNormalization-9 with all five outputs and Dropout-7's mask (of the
  input's float type): the run that measures the shapes inference leaves unknown wrote a
  graph output that no node produced (the saved mean and variance) and a bool mask, and
  onnxruntime refused the run.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import onnxinit
from onnxinit.graph import load
from onnxinit.passes.measuring import with_outputs
from onnxinit.passes.training import training_semantics

from .models import make_model

LAYERS = 12
WIDTH = 16


def _head_split_layers(seed: int = 0) -> onnx.ModelProto:
    """``LAYERS`` layers on x [4, 8, WIDTH], each: h = tanh(x W_i); split into 2 heads by a
    Reshape to ``Concat(Unsqueeze(Shape(h)[0]), Unsqueeze(Shape(h)[1]), [2, -1])`` (opset 9's
    attribute Unsqueeze), back by a Reshape to ``[Shape[0], Shape[1], -1]``; after the last
    layer a Softmax over each head's features, ``softmax(4 p)`` (12 folding rounds: onnx's
    data propagation alone stops at the first Unsqueeze)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
             (("zero", 0), ("one", 1), ("heads", [2, -1]), ("rest", [-1]))]
    nodes, x = [], "x"
    for i in range(LAYERS):
        w = rng.normal(0, 1.5 / np.sqrt(WIDTH), (WIDTH, WIDTH)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [
            helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]),
            helper.make_node("Tanh", [f"m{i}"], [f"h{i}"]),
            helper.make_node("Shape", [f"h{i}"], [f"s{i}"]),
            helper.make_node("Gather", [f"s{i}", "zero"], [f"n{i}"], axis=0),
            helper.make_node("Gather", [f"s{i}", "one"], [f"t{i}"], axis=0),
            helper.make_node("Unsqueeze", [f"n{i}"], [f"nu{i}"], axes=[0]),
            helper.make_node("Unsqueeze", [f"t{i}"], [f"tu{i}"], axes=[0]),
            helper.make_node("Concat", [f"nu{i}", f"tu{i}", "heads"], [f"split{i}"], axis=0),
            helper.make_node("Reshape", [f"h{i}", f"split{i}"], [f"r{i}"]),
            helper.make_node("Transpose", [f"r{i}"], [f"p{i}"], perm=[0, 2, 1, 3]),
            helper.make_node("Transpose", [f"p{i}"], [f"b{i}"], perm=[0, 2, 1, 3]),
            helper.make_node("Concat", [f"nu{i}", f"tu{i}", "rest"], [f"merge{i}"], axis=0),
            helper.make_node("Reshape", [f"b{i}", f"merge{i}"], [f"z{i}"]),
        ]
        x = f"z{i}"
    last = LAYERS - 1
    inits.append(numpy_helper.from_array(np.array(0.25, np.float32), "scale"))
    nodes += [
        helper.make_node("Div", [f"p{last}", "scale"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=3),
    ]
    return make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8, WIDTH])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, None)], inits, opset=9)


def _measured_variances(model: onnx.ModelProto, names, batches: int = 64) -> dict[str, float]:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                              for n in names)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    runs = [session.run(list(names), {"x": rng.normal(size=(4, 8, WIDTH)).astype(np.float32)})
            for _ in range(batches)]
    return {n: float(np.var(np.stack([r[i] for r in runs]))) for i, n in enumerate(names)}


def test_deep_opset9_head_splits_get_shapes_without_a_run(monkeypatch):
    def measured(*args, **kwargs):
        raise AssertionError("the model was run to measure a shape")

    monkeypatch.setattr("onnxinit.graph.measured_shapes", measured)
    model = _head_split_layers()
    graph = load(model)
    assert not graph.missing_shapes(), graph.warnings
    assert graph.shape(f"r{LAYERS - 1}") == (4, 8, 2, WIDTH // 2)
    report = onnxinit.analyze(model)
    names = [f"z{LAYERS - 1}", "scores"]
    measured = _measured_variances(model, names)
    for name in names:
        predicted = {t.name: t.var for t in report.tensors}[name]
        assert abs(predicted / measured[name] - 1) < 0.1, (name, predicted, measured[name])


def _batchnorm9_dropout7() -> onnx.ModelProto:
    """Conv -> BatchNormalization-9 (training mode: all five outputs, as torch writes them at
    opset 9) -> Dropout-7 (ratio 0, with its mask) on x [4, 3, 6, 6]."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("w", rng.normal(0, 0.3, (5, 3, 3, 3))), ("gamma", rng.uniform(0.5, 1.5, 5)),
        ("beta", rng.normal(0, 0.1, 5)), ("rmean", np.zeros(5)), ("rvar", np.ones(5)))]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "rmean", "rvar"],
                         ["y", "mean", "var", "saved_mean", "saved_var"], momentum=0.9),
        helper.make_node("Dropout", ["y"], ["d", "mask"], ratio=0.0),
        helper.make_node("Relu", ["d"], ["out"]),
    ]
    return make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3, 6, 6])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits, opset=9)


def test_opset9_batchnorm_and_dropout_outputs_run_under_training_semantics():
    model = _batchnorm9_dropout7()
    asked = ["c", "y", "mean", "var", "saved_mean", "saved_var", "mask"]
    types = {n: TensorProto.FLOAT for n in asked}  # Dropout-7's mask is of the input's type
    run = with_outputs(model, asked, types)
    training_semantics(run, {"c": (4, 5, 6, 6), "y": (4, 5, 6, 6)}, types)
    session = ort.InferenceSession(run.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).normal(size=(4, 3, 6, 6)).astype(np.float32)
    values = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x})))
    c = values["c"]
    np.testing.assert_allclose(values["saved_mean"], c.mean(axis=(0, 2, 3)), rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(values["saved_var"], c.var(axis=(0, 2, 3)), rtol=1e-4)
    assert values["mask"].dtype == np.float32 and np.all(values["mask"] == 1)
    gamma, beta = (numpy_helper.to_array(t).reshape(1, -1, 1, 1)
                   for t in model.graph.initializer[1:3])
    normalised = gamma * (c - c.mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(
        c.var(axis=(0, 2, 3), keepdims=True) + 1e-5) + beta
    np.testing.assert_allclose(values["y"], normalised, rtol=0, atol=2e-4 * 3)


def test_opset9_batchnorm_model_loads_without_a_failed_run():
    graph = load(_batchnorm9_dropout7())
    assert not any("could not run" in w for w in graph.warnings), graph.warnings
    assert not any("could not be determined" in w for w in graph.warnings), graph.warnings
