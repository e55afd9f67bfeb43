"""Unrolled recurrences: a recurrent layer whose steps an exporter wrote out as separate nodes.

Keras' ``unroll=True`` (tf2onnx), a cell called in a Python loop, or the dynamo exporter's
``nn.RNN`` write each step ``t`` as its own nodes: ``z_t = x_t W + h_{t-1} R + b``, the gates
and the state ``h_t = f(z_t, c_{t-1})`` element-wise, and ``h_t R`` again at step ``t + 1``
with the *same* constant R. Each step's tensors are separate, so no rule sees that ``h_{t-1}``
and ``x_t`` are correlated (a stacked layer's input is the previous layer's states, strongly
correlated across steps), nor that ``c_{t-1}`` and ``g_t`` are: the cell state of a second
unrolled LSTM read 0.27x of the measured variance (``c_t = f_t c_{t-1} + i_t g_t`` summed as
independent terms where the drive is coherent across steps).

Found here, per graph: a *recurrent product* is a MatMul (or Gemm) ``y = s R`` of a signal by a
constant 2-D weight R that another MatMul/Gemm of the same weight reads again downstream
within ``DEPTH`` step nodes (element-wise ops, Split, Squeeze, Unsqueeze, Concat, Identity,
constant Slice and Gather): the weight carries a state from one step to the next. A weight
used at two places of a network without such a path (a shared tower, tied embeddings, a
weight-shared transformer whose path crosses a norm or a softmax) is no recurrence. The
*steps* are the element-wise nodes downstream of recurrent products within ``DEPTH`` step
nodes; :mod:`.unrolled_draws` evaluates them on joint draws of everything they are computed
from (the recurrences themselves, stacked layers through the ops that stack, transpose and
unstack their steps), so that every covariance between steps comes out of the draws.
"""

from __future__ import annotations

import weakref
from collections import deque

import numpy as np

from .draw_ops import NARY, UNARY

DEPTH = 24  # step nodes walked from a recurrent product to the next use of its weight
LAYOUT = ("Split", "Squeeze", "Unsqueeze", "Concat", "Identity", "Slice", "Gather")
PRODUCTS = ("MatMul", "Gemm")

_REGIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def elementwise_op(node) -> bool:
    """A default-domain element-wise op the draws evaluate (a Cast only to a float type is
    checked where it is evaluated)."""
    return node.domain in ("", "ai.onnx") and (node.op_type in UNARY or node.op_type in NARY)


def product_weight(graph, node) -> str | None:
    """The constant 2-D weight of ``y = s W`` (MatMul) or ``y = alpha s W' + beta C`` (Gemm,
    ``transA = 0``) whose first operand is a signal, else None."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in PRODUCTS or len(node.input) < 2:
        return None
    if not graph.is_signal(node.input[0]) or not graph.is_constant(node.input[1]):
        return None
    if node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute):
        return None
    if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] and not \
            graph.is_constant(node.input[2]):
        return None
    shape = graph.shape(node.input[1])
    if shape is None:
        value = graph.value(node.input[1])
        shape = None if value is None else np.shape(value)
    return node.input[1] if shape is not None and len(shape) == 2 else None


def _step_node(graph, node) -> bool:
    if node.domain not in ("", "ai.onnx"):
        return False
    return elementwise_op(node) or node.op_type in LAYOUT


def _downstream(graph, node_id: str) -> tuple[set[str], set[str]]:
    """(step nodes, products) reached from ``node_id``'s outputs through step nodes within
    ``DEPTH`` nodes (breadth first)."""
    steps, products = set(), set()
    queue = deque((o, 1) for o in graph.node(node_id).output if o)
    seen = set()
    while queue:
        tensor, depth = queue.popleft()
        for consumer, index in graph.consumers.get(tensor, ()):
            if consumer in seen:
                continue
            node = graph.node(consumer)
            if node.op_type in PRODUCTS:
                if index == 0:
                    products.add(consumer)
                continue
            if not _step_node(graph, node) or depth >= DEPTH:
                continue
            seen.add(consumer)
            steps.add(consumer)
            queue.extend((o, depth + 1) for o in node.output if o and graph.is_signal(o))
    return steps, products


def _find(graph) -> frozenset:
    by_weight: dict[str, list[str]] = {}
    for node_id in graph.order:
        weight = product_weight(graph, graph.node(node_id))
        if weight is not None:
            by_weight.setdefault(weight, []).append(node_id)
    steps: set[str] = set()
    for members in by_weight.values():
        if len(members) < 2:
            continue
        group = set(members)
        walks = [_downstream(graph, member) for member in members]
        if any(products & group for _, products in walks):  # the weight carries a state
            for found, _ in walks:
                steps |= {s for s in found if elementwise_op(graph.node(s))}
    return frozenset(steps)


def unrolled_steps(graph) -> frozenset:
    """The ids of the element-wise nodes of unrolled recurrences in ``graph`` (see the module
    docstring), found once per graph."""
    found = _REGIONS.get(graph)
    if found is None:
        found = _REGIONS[graph] = _find(graph)
    return found
