"""Folded constants (onnxinit/folded_values.py): a large value expanded from a few numbers (an
index grid) is computed when asked and not kept, each of its inputs computed once per
request; a large value computed from as much stored data (a transposed weight) is kept; the
load does not compute an integer constant too large to show shape inference."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxinit import folded_values
from onnxinit.graph import load

from .models import make_model

_BIG = (1 << 20) + 3  # elements: above folded_values.KEPT_ELEMENTS


def _i64(name, value):
    return numpy_helper.from_array(np.array(value, dtype=np.int64), name)


def _model():
    """``idx = Concat(e, e)``, ``e = Expand(Range(0, 4), [BIG/4..])`` (int64, from five
    numbers), added as a float to the signal; ``wt = Transpose(w)`` of a large weight, which
    the signal is multiplied by; ``g = Gather(t, idx)`` of a signal."""
    n = _BIG
    rng = np.random.default_rng(0)
    w = rng.standard_normal((n,)).astype(np.float32)
    nodes = [
        helper.make_node("Range", ["zero", "four", "one"], ["r"]),
        helper.make_node("Expand", ["r", "eshape"], ["e"]),
        helper.make_node("Concat", ["e", "e"], ["idx"], axis=0),
        helper.make_node("Cast", ["idx"], ["idxf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["x", "idxf"], ["y"]),
        helper.make_node("Transpose", ["w"], ["wt"], perm=[0]),
        helper.make_node("Mul", ["x", "wt"], ["z"]),
        helper.make_node("Gather", ["t", "idx"], ["g"]),  # int indices meet a signal
    ]
    inits = [_i64("zero", 0), _i64("four", 4), _i64("one", 1),
             _i64("eshape", [n // 4 + 1, 4]), numpy_helper.from_array(w, "w")]
    return make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
                helper.make_tensor_value_info("t", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("g", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], inits), w


def test_an_expanded_index_grid_is_computed_when_asked_and_not_kept(monkeypatch):
    model, w = _model()
    evaluated: list[str] = []
    real = folded_values.evaluate_node

    def counted(node, feeds, **kwargs):
        evaluated.append(node.output[0])
        return real(node, feeds, **kwargs)

    monkeypatch.setattr(folded_values, "evaluate_node", counted)
    graph = load(model)
    half = np.broadcast_to(np.arange(4), (_BIG // 4 + 1, 4))
    expected = np.concatenate([half, half])
    for _ in range(2):
        evaluated.clear()
        np.testing.assert_array_equal(graph.value("idx"), expected)
        # asked twice, computed twice, but within a request "e" (read twice) once
        assert evaluated.count("e") == 1 and evaluated.count("idx") == 1
    assert "idx" not in graph._values and "e" not in graph._values
    assert graph.shape("idx") == expected.shape
    # the transposed weight: as many bytes as its data, kept
    np.testing.assert_array_equal(graph.value("wt"), w)
    evaluated.clear()
    graph.value("wt")
    assert evaluated == []


def test_the_load_does_not_fold_an_integer_constant_too_large_for_shape_inference(monkeypatch):
    model, _ = _model()
    evaluated: list[str] = []
    real = folded_values.evaluate_node

    def counted(node, feeds, **kwargs):
        evaluated.append(node.output[0])
        return real(node, feeds, **kwargs)

    monkeypatch.setattr(folded_values, "evaluate_node", counted)
    load(model)
    assert "idx" not in evaluated and "e" not in evaluated
