"""support.nonnegative is memoised per graph object and tensor for whole walks: asked again (a
ReLU's element-wise rule, then its channel covariance) it answers without walking, and the
answer follows the graph's values when a view changes them in place (autoinit's take_changes,
--keep-bias' trying). Oracle: the sign of the constant the walk reads, and a fresh walk (the
memo emptied)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxinit.graph import load
from onnxinit.plan import Change
from onnxinit.rules import support

from ..models import make_model


def _graph():
    """``y = Relu(Relu(x) * s)``: y's input is non-negative exactly when s is."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="first"),
             helper.make_node("Mul", ["r", "s"], ["a"], name="scale"),
             helper.make_node("Relu", ["a"], ["y"], name="second")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3])],
                       [numpy_helper.from_array(np.array(1.5, np.float32), "s")])
    return load(model)


def _fresh(graph) -> bool:
    support._MEMO.pop(graph, None)
    return support.nonnegative(graph, "a")


def test_a_second_question_does_not_walk(monkeypatch):
    graph = _graph()
    walks = []
    inner = support._nonnegative

    def counted(*args):
        walks.append(args[1])
        return inner(*args)

    monkeypatch.setattr(support, "_nonnegative", counted)
    node = graph.node(graph.producer["y"])
    assert support.identity_on_input(node, graph)
    first = len(walks)
    assert first > 0
    assert support.identity_on_input(node, graph)
    assert len(walks) == first  # answered from the memo


def test_memo_follows_take_changes_and_trying():
    graph = _graph()
    view = graph.with_changes({})
    assert support.nonnegative(view, "a") is True
    view.take_changes({"s": Change(scale=-2.0)})
    assert float(view.value("s")) < 0
    assert support.nonnegative(view, "a") is False
    assert _fresh(view) is False
    with view.trying({"s": Change(scale=-1.0)}):
        assert float(view.value("s")) > 0
        assert support.nonnegative(view, "a") is True
        assert _fresh(view) is True
    assert support.nonnegative(view, "a") is False
    assert support.nonnegative(graph, "a") is True  # the loaded graph keeps its values


def test_a_shorter_walk_is_not_memoised():
    """A walk of fewer producers than MAX_DEPTH answers for its own depth."""
    graph = _graph()
    assert support.nonnegative(graph, "a") is True
    assert support.nonnegative(graph, "a", depth=0) is False  # no producer followed
    assert support.nonnegative(graph, "a") is True
