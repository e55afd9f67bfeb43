"""RuleContext.attrs is decoded once per node of a graph and shared by every context of that
node: the answers must be onnx's own decoding (oracle: ``onnx.helper.get_attribute_value``), a
list a rule changes must not change the next answer, and a stand-in node under the same id
(a rule's modified copy) must be decoded from its own attributes."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from onnxinit.graph import load
from onnxinit.moments import Moments
from onnxinit.rules.context import RuleContext

from ..models import make_model


def _graph():
    node = helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[2, 2],
                            strides=[2, 2], auto_pad="NOTSET")
    model = make_model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])])
    return load(model)


def test_contexts_of_a_node_share_onnxs_decoding():
    graph = _graph()
    node_id = graph.producer["y"]
    node = graph.node(node_id)
    want = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    first = RuleContext(node, node_id, graph)
    second = first.for_node(node_id)
    assert first.attrs == want and second.attrs is first.attrs
    assert first.attr("kernel_shape") == [2, 2] and first.attr("auto_pad") == "NOTSET"
    assert first.attr("dilations", [1, 1]) == [1, 1]


def test_a_changed_answer_does_not_change_the_next():
    graph = _graph()
    node_id = graph.producer["y"]
    ctx = RuleContext(graph.node(node_id), node_id, graph)
    strides = ctx.attr("strides")
    strides[0] = 7
    assert ctx.attr("strides") == [2, 2]
    assert ctx.for_node(node_id).attr("strides") == [2, 2]


def test_a_stand_in_node_is_decoded_from_its_own_attributes():
    graph = _graph()
    node_id = graph.producer["y"]
    assert RuleContext(graph.node(node_id), node_id, graph).attr("strides") == [2, 2]
    stand_in = onnx.NodeProto()
    stand_in.CopyFrom(graph.node(node_id))
    del stand_in.attribute[:]
    stand_in.attribute.extend([helper.make_attribute("strides", [1, 1]),
                               helper.make_attribute("kernel_shape", [3, 3])])
    ctx = RuleContext(stand_in, node_id, graph)
    assert ctx.attr("strides") == [1, 1] and ctx.attr("kernel_shape") == [3, 3]
    assert RuleContext(graph.node(node_id), node_id, graph).attr("strides") == [2, 2]


def test_a_context_without_a_graph_decodes_its_node():
    node = helper.make_node("LeakyRelu", ["x"], ["y"], alpha=0.25)
    assert RuleContext(node, "n", None).attr("alpha") == 0.25


def test_the_context_of_another_node_keeps_the_propagated_moments():
    graph = _graph()
    node_id = graph.producer["y"]
    known = {"x": Moments(0.0, 1.0)}
    other = RuleContext(graph.node(node_id), node_id, graph, known=known).for_node(node_id)
    assert other.known is known
