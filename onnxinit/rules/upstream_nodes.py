"""The subgraph that computes a tensor from constants and integer or boolean graph inputs: the
nodes a mask, position ids or an index need run to be known exactly (:mod:`.masks`,
:mod:`.derived_ids`, :mod:`.exact_values`, :mod:`.id_masks`), and an onnxruntime session of it."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..feeds import vocab_size
from ..runtime import make_session

MAX_NODES = 400  # nodes of an input-derived subgraph evaluated for a mask


def upstream(graph, tensor: str, token_ids: bool = False, leaf=None,
             max_nodes: int = MAX_NODES) -> tuple[list[str], set[str]] | None:
    """(nodes in topological order, graph inputs) computing ``tensor`` from constants and
    integer/boolean inputs that are not token ids (``token_ids``: token ids too); None when a
    float signal, token ids or more than ``max_nodes`` nodes are involved. ``leaf(name)``, when
    given, is asked about each signal met on the way: True (it is known, the walk stops there)
    or False (the walk fails)."""
    nodes, inputs, stack, seen = set(), set(), [tensor], set()
    while stack:
        name = stack.pop()
        if not name or name in seen or graph.is_constant(name):
            continue
        seen.add(name)
        if name in graph.input_names:
            if graph.is_float(name) or (not token_ids and vocab_size(graph, name) is not None):
                return None
            inputs.add(name)
            continue
        if name != tensor and graph.is_signal(name):
            if leaf is None or not leaf(name):
                return None
            continue
        producer = graph.producer.get(name)
        if producer is None:
            return None
        if producer in nodes:
            continue
        nodes.add(producer)
        if len(nodes) > max_nodes:
            return None
        stack.extend(graph.node(producer).input)
    return [n for n in graph.order if n in nodes], inputs


def subgraph_session(graph, order: list[str], feeds: list[tuple[str, object]],
                     outputs: list[str]):
    """An onnxruntime session (CPU) of ``graph``'s nodes ``order`` with the constants they read,
    fed the tensors ``feeds`` (name, shape) and giving ``outputs``; raises what onnxruntime
    raises when it cannot run the subgraph alone."""
    used = {n for node_id in order for n in graph.node(node_id).input if n}
    constants = [onnx.numpy_helper.from_array(np.asarray(graph.value(n)), n)
                 for n in sorted(used) if graph.is_constant(n)]
    model = helper.make_model(
        helper.make_graph(
            [graph.node(n) for n in order], "subgraph",
            [helper.make_tensor_value_info(n, graph.dtypes[n], shape) for n, shape in feeds],
            [helper.make_tensor_value_info(o, graph.dtypes.get(o, 0), None) for o in outputs],
            constants),
        opset_imports=list(graph.model.opset_import), ir_version=min(graph.model.ir_version, 10))
    return make_session(model, device="cpu")


__all__ = ["MAX_NODES", "subgraph_session", "upstream"]
