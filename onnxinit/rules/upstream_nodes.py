"""The subgraph that computes a tensor from constants and integer or boolean graph inputs: the
nodes a mask, position ids or an index need run to be known exactly (:mod:`.masks`,
:mod:`.derived_ids`, :mod:`.exact_values`)."""

from __future__ import annotations

from ..feeds import vocab_size

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


__all__ = ["MAX_NODES", "upstream"]
