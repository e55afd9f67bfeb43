"""Which axis of a node's output holds the merged windows (:mod:`.window_classes`): the node
acts on each index of that axis alone (layout moves, reductions and axis ops along other axes,
element-wise arithmetic whose other operands are constant along it)."""

from __future__ import annotations

import math

import numpy as np

from .rules.context import RuleContext
from .rules.reduce import reduced_axes
from .rules.shape import slice_params

# ops that act on each index of the merged axis alone when it is not their axis
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Clip", "Max", "Min", "Relu", "Exp",
                "Erf", "Sigmoid", "Tanh", "Neg", "Abs", "Identity", "Dropout", "Cast", "Where",
                "Reciprocal", "Gelu", "Log"}
_REDUCE = {"ReduceL2", "ReduceSumSquare", "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin",
           "ReduceL1"}
_AXIS_OPS = {"Softmax", "LogSoftmax", "LayerNormalization", "Split"}


def _const_shape(ctx: RuleContext, i: int, known) -> tuple | None:
    name = ctx.node.input[i]
    m = known.get(name)
    if m is not None:
        return tuple(np.broadcast_shapes(m.mean.shape, m.var.shape))
    c = ctx.const(i)
    return None if c is None else tuple(np.shape(c))


def window_axis(ctx: RuleContext, axes: list[int | None], known) -> int | None:
    """The merged axis (counted from the end) of the node's first output when the node acts
    on each of its indices alone; None otherwise. ``axes[i]``: input i's merged axis, None
    for an input without windows."""
    op = ctx.node.op_type
    given = [(i, a) for i, a in enumerate(axes) if a is not None]
    if len({a for _, a in given}) != 1 or not ctx.node.output:
        return None
    i0, a = given[0]
    in_shape = tuple(ctx.in_shape(i0))
    out_shape = ctx.graph.shape(ctx.node.output[0])
    if out_shape is None:
        return None
    r, pos = len(in_shape), len(in_shape) + a
    if pos < 0:
        return None
    out_rank = len(out_shape)
    if op == "Transpose":
        perm = list(ctx.attr("perm", list(range(r))[::-1]))
        return perm.index(pos) - out_rank
    if op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
        before = math.prod(in_shape[:pos])
        for j in range(out_rank):
            if math.prod(out_shape[:j]) == before and out_shape[j] == in_shape[pos]:
                return j - out_rank
        return None
    if op == "Gather":
        g = int(ctx.attr("axis", 0)) % r
        indices = ctx.const(1)
        if g == pos or indices is None or i0 != 0:
            return None
        return (pos + np.ndim(indices) - 1 if g < pos else pos) - out_rank
    if op in _REDUCE:
        reduced = reduced_axes(ctx, r)
        if reduced is None or pos in reduced:
            return None
        if not ctx.attr("keepdims", 1):
            pos -= sum(1 for b in reduced if b < pos)
        return pos - out_rank
    if op in _AXIS_OPS:
        default = -1 if op != "Split" else 0
        if int(ctx.attr("axis", default)) % r == pos:
            return None
        return a if out_rank == r else None
    if op == "Slice":
        if any(ax == pos for ax, *_ in slice_params(ctx, r)):
            return None
        return a
    if op == "MatMul":
        if -a <= 2:  # the merged axis must be a batch axis of the product
            return None
    elif op not in _ELEMENTWISE and op != "Expand":
        return None
    for i, ax in enumerate(axes):  # the other operands must not vary along the merged axis
        if ax is None and i < len(ctx.node.input) and ctx.node.input[i]:
            shape = _const_shape(ctx, i, known)
            if shape is None or (len(shape) >= -a and shape[a] != 1):
                return None
    return a


__all__ = ["window_axis"]
