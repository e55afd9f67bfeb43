"""The axes a reduction node reduces (the attribute before opset 13/18, the input after)."""

from __future__ import annotations

import numpy as np

from .context import RuleContext, RuleError


def reduced_axes(ctx: RuleContext, rank: int) -> tuple[int, ...] | None:
    """Reduced axes; None for the no-op (empty axes with noop_with_empty_axes)."""
    op = ctx.node.op_type
    from_input = ctx.opset >= (13 if op == "ReduceSum" else 18)
    if from_input:
        axes = ctx.const(1) if ctx.has_input(1) else None
        if ctx.has_input(1) and axes is None:
            raise RuleError("the axes are not constant")
        axes = [] if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]
    else:
        axes = list(ctx.attr("axes", []))
    if not axes:
        if ctx.attr("noop_with_empty_axes", 0):
            return None
        return tuple(range(rank))
    return tuple(sorted({a % rank for a in axes}))


def node_axes(node, graph, rank: int) -> tuple[int, ...] | None:
    """The axes of a reduction ``node`` read without its context: the attribute (below opset
    18) or the constant second input (from it), all axes when neither; None when the input is
    not constant."""
    axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = graph.value(node.input[1])
        if value is None:
            return None
        axes = [int(v) for v in np.reshape(value, -1)]
    return tuple(range(rank)) if axes is None else tuple(sorted(a % rank for a in axes))
