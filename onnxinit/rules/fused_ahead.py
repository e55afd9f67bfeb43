"""Integrating ``x * Sigmoid(x)`` in the same pass as ``Sigmoid(x)``.

A SiLU written as two nodes integrates the same cells twice by the smooth quadrature: the
Sigmoid's rule ``f(x)`` over x's cells, then the Mul's fused rule (:mod:`.fusion`)
``h(x) = x * f(x)`` over the same cells. :func:`companions` finds, when an element-wise node
``f`` of a source tensor x (no chain before it) is about to be integrated, the binary
consumers (Mul, Add, Sub, Pow) whose fused function is ``op(x, f(x))`` or ``op(f(x), x)``,
and offers their chains to :func:`.smooth_quadrature.sharing`: each is integrated from the same
node values and ``f``'s values, ``h = op(x, y)`` (the same operations as ``h`` itself), and
its answer waits for the Mul's own call, which takes it only for equal keys and equal cells.
"""

from __future__ import annotations

import numpy as np

from .context import RuleContext, RuleError
from .elementwise import QUADRATURE_COMPANIONS, ElementwiseFn
from .fusion import common_ancestor, fused_function
from .piecewise import fused_pieces
from .smooth_quadrature import Companion

_OPS = {"Mul": np.multiply, "Add": np.add, "Sub": np.subtract, "Pow": np.power}


def _after(op, first: bool):
    """``(x, y) -> op(x, y)`` (``first``: x is the first operand) else ``op(y, x)``."""
    if first:
        return lambda x, y: op(x, y)
    return lambda x, y: op(y, x)


def companions(ctx: RuleContext, f: ElementwiseFn, which: int) -> list[Companion]:
    """The companions of node ``f``'s integral: for each consumer of its output whose two
    operands are ``x`` and ``f(x)`` (x its signal input), ``op(x, f(x))`` under the key its
    fused rule integrates it with."""
    node, graph = ctx.node, ctx.graph
    if not node.output or not node.output[0] or which >= len(node.input):
        return []
    source = node.input[which]
    out = []
    for node_id, _ in graph.consumers.get(node.output[0], []):
        consumer = graph.node(node_id)
        if consumer.op_type not in _OPS:
            continue
        try:
            found = common_ancestor(ctx.for_node(node_id))
        except RuleError:
            continue
        if found is None or found[0] != source:
            continue
        _, chain_a, chain_b = found
        keys_a, keys_b = tuple(g.key for g in chain_a), tuple(g.key for g in chain_b)
        if (keys_a, keys_b) not in (((), (f.key,)), ((f.key,), ())):
            continue
        if fused_pieces(consumer.op_type, list(keys_a), list(keys_b)) is not None:
            continue  # integrated in closed form
        h = fused_function(consumer.op_type, chain_a, chain_b)
        out.append(Companion((f.key,), (h.key,), h.fn, _after(_OPS[consumer.op_type], not keys_a)))
    return out


QUADRATURE_COMPANIONS.append(companions)
