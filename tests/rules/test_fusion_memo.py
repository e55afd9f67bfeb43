"""fusion.common_ancestor is memoised per graph object and node: the answer must follow the
graph's values when a view changes them in place (autoinit's take_changes, --keep-bias' trying).
Oracle: the chain evaluated at a point against the constant it must hold, and the answer of a
fresh search (the memo emptied)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxinit.graph import load
from onnxinit.plan import Change
from onnxinit.rules import fusion
from onnxinit.rules.catalog import load_rules
from onnxinit.rules.context import RuleContext
from onnxinit.rules.gaussian import compose

from ..models import make_model


def _graph():
    """``y = (x * s) * Sigmoid(x)``: both operands of y are element-wise functions of x, the
    first through the initializer s."""
    nodes = [helper.make_node("Mul", ["x", "s"], ["a"], name="scale"),
             helper.make_node("Sigmoid", ["x"], ["b"], name="gate"),
             helper.make_node("Mul", ["a", "b"], ["y"], name="product")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3])],
                       [numpy_helper.from_array(np.array(1.5, np.float32), "s")])
    load_rules()  # the unary ops' functions (Sigmoid's)
    return load(model)


def _scale_of(graph) -> float:
    """The multiplier of the first operand's chain, read by evaluating it at 1."""
    node_id = graph.producer["y"]
    found = fusion.common_ancestor(RuleContext(graph.node(node_id), node_id, graph))
    assert found is not None and found[0] == "x"
    return float(compose(found[1])(np.array(1.0)))


def _fresh_scale_of(graph) -> float:
    fusion._MEMO.pop(graph, None)
    return _scale_of(graph)


def test_memo_answers_again_on_an_unchanged_graph():
    graph = _graph()
    node_id = graph.producer["y"]
    ctx = RuleContext(graph.node(node_id), node_id, graph)
    first = fusion.common_ancestor(ctx)
    assert fusion.common_ancestor(ctx) is first
    assert _scale_of(graph) == 1.5


def test_memo_follows_take_changes_and_trying():
    graph = _graph()
    view = graph.with_changes({})
    assert _scale_of(view) == 1.5
    view.take_changes({"s": Change(scale=2.0)})
    assert _scale_of(view) == 3.0 == _fresh_scale_of(view)
    with view.trying({"s": Change(scale=-1.0)}):
        assert _scale_of(view) == -3.0 == _fresh_scale_of(view)
    assert _scale_of(view) == 3.0 == _fresh_scale_of(view)
    assert _scale_of(graph) == 1.5  # the loaded graph is not changed by its view's changes
