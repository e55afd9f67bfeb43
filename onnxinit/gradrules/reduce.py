"""Backward rules of the reductions ReduceMean and ReduceSum: dy broadcast back over the k
reduced elements, divided by k for the mean. Over the spatial axes of a convolution-layout
tensor the whole variance is a sample's spatial mean (``sample_var = Var``)."""

from __future__ import annotations

import numpy as np

from .context import GradContext
from .gradient import Gradient
from .registry import rule


def _axes(ctx: GradContext, rank: int) -> list[int]:
    axes = ctx.attr("axes")
    if axes is None and ctx.has_input(1):
        value = ctx.const(1)
        axes = None if value is None else list(np.asarray(value).reshape(-1))
    if axes is None or len(axes) == 0:
        if ctx.attr("noop_with_empty_axes", 0):
            return []
        return list(range(rank))
    return sorted(int(a) % rank for a in axes)


@rule("ReduceMean", "ReduceSum")
def reduce_mean(grads, ctx: GradContext):
    """See the module docstring."""
    g = grads[0]
    shape = ctx.in_shape(0)
    rank = len(shape)
    axes = _axes(ctx, rank)
    k = int(np.prod([shape[a] for a in axes])) if axes else 1
    scale = 1.0 / k if ctx.node.op_type == "ReduceMean" else 1.0
    m, v = g.total()
    sample_var = None
    if rank > 2 and axes == list(range(2, rank)):
        c = shape[1]
        keep = bool(ctx.attr("keepdims", 1))
        gg = g if keep else g.expand_rank(rank - len(axes))
        mc, vc = gg.values_along(1, c) if gg.rank >= 2 else (np.full(c, m), np.full(c, v))
        var = vc * scale**2
        return [Gradient((mc * scale).reshape(1, c, *[1] * (rank - 2)),
                         var.reshape(1, c, *[1] * (rank - 2)), var.reshape(1, c, *[1] * (rank - 2)),
                         np.ones(shape[2:]))] + [None] * (len(ctx.node.input) - 1)
    return [Gradient(m * scale, v * scale**2, sample_var)] + [None] * (len(ctx.node.input) - 1)
