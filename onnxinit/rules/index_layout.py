"""Where each element of a tensor comes from, through layout ops: index arrays laid out like
the source (its row, its column) run through Cast, Transpose, Unsqueeze, Squeeze, Reshape,
Flatten, Expand, Split, Slice and Gather as the op moves the values, so that each element of
the result names its source element (:mod:`.shared_projection`)."""

from __future__ import annotations

import numpy as np

from .context import RuleContext, RuleError
from .shape import slice_params


def move(nctx: RuleContext, out: str, arrays: list[np.ndarray]) -> list[np.ndarray] | None:
    """The layout op of ``nctx`` applied to each index array (laid out like its traced input),
    giving arrays laid out like ``out``; None for an op it cannot follow."""
    node, op = nctx.node, nctx.node.op_type
    shape = nctx.graph.shape(out)
    if shape is None or any(not isinstance(s, (int, np.integer)) or s < 0 for s in shape):
        return None
    shape = tuple(int(s) for s in shape)
    x = arrays[0]
    if op in ("Cast", "Identity"):
        moved = arrays
    elif op == "Transpose":
        perm = nctx.attr("perm") or list(range(x.ndim))[::-1]
        moved = [np.transpose(a, perm) for a in arrays]
    elif op in ("Unsqueeze", "Squeeze", "Reshape", "Flatten"):
        if int(np.prod(shape)) != x.size:
            return None
        moved = [a.reshape(shape) for a in arrays]
    elif op == "Expand":
        moved = [np.broadcast_to(a, shape) for a in arrays]
    elif op == "Split":  # the outputs before ``out`` (their static sizes) give its start
        axis = int(nctx.attr("axis", 0)) % x.ndim
        before = [nctx.graph.shape(o) for o in node.output[:list(node.output).index(out)]]
        if any(not static(b) or len(b) != x.ndim for b in before):
            return None
        start = sum(int(b[axis]) for b in before)
        index = [slice(None)] * x.ndim
        index[axis] = slice(start, start + shape[axis])
        moved = [a[tuple(index)] for a in arrays]
    elif op == "Slice":
        try:
            params = slice_params(nctx, x.ndim)
        except RuleError:
            return None
        index = [slice(None)] * x.ndim
        for a, s, e, st in params:
            index[a] = slice(s, e, st)
        moved = [a[tuple(index)] for a in arrays]
    elif op == "Gather":
        indices = nctx.const(1)
        if indices is None:
            return None
        axis = int(nctx.attr("axis", 0)) % x.ndim
        moved = [np.take(a, np.asarray(indices, np.int64), axis=axis) for a in arrays]
    else:
        return None
    return moved if all(m.shape == shape for m in moved) else None


def grid(shape) -> tuple:
    """(row index, column index) of the elements of a ``[..., cols]`` tensor."""
    rows = int(np.prod(shape[:-1]))
    return (np.arange(rows).reshape(*shape[:-1], 1), np.arange(shape[-1]))


def coordinates(ctx: RuleContext, ancestor: str, steps: list, row: str, d: int):
    """(row index, column index) in ``row`` (``[..., d]``) of each element of ``ancestor``,
    laid out like it; None unless the layout steps are a permutation of the elements."""
    shape = ctx.graph.shape(ancestor)
    if not static(shape):
        return None
    size = int(np.prod(shape))
    moved = [np.arange(size).reshape(shape)]
    for node_id, _, out in reversed(steps):
        moved = move(ctx.for_node(node_id), out, moved)
        if moved is None:
            return None
    flat = moved[0].ravel()
    if flat.size != size:
        return None
    where = np.full(size, -1)
    where[flat] = np.arange(size)
    if np.any(where < 0):
        return None
    where = where.reshape(shape)
    return where // d, where % d


def static(shape) -> bool:
    return shape is not None and all(isinstance(s, (int, np.integer)) and s > 0 for s in shape)


__all__ = ["coordinates", "grid", "move", "static"]
