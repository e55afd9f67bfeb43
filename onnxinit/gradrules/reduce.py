"""Backward rules of the reductions ReduceMean and ReduceSum: dy broadcast back over the k
reduced elements, divided by k for the mean. Over the spatial axes of a convolution-layout
tensor the whole variance is a sample's spatial mean (``sample_var = Var``). Over other axes
(the tokens of a sequence) every reduced element receives the same value: the gradient's token
field (:mod:`.tokens`) is one everywhere, and statistics along the last axis, when it is kept,
stay per feature."""

from __future__ import annotations

import numpy as np

from .context import GradContext
from .gradient import Gradient, along
from .registry import rule
from .tokens import shared


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
    rest = [None] * (len(ctx.node.input) - 1)
    tokens = shared(axes, rank, k) if axes and axes[0] > 0 else None
    last = rank - 1
    if tokens is None or last in axes:
        return [Gradient(m * scale, v * scale**2, sample_var, tokens=tokens)] + rest
    keep = bool(ctx.attr("keepdims", 1))
    gg = g if keep else g.expand_rank(rank - len(axes))
    mf, vf = gg.values_along(gg.rank - 1, shape[last]) if gg.rank >= 1 else (m, v)
    out = along(mf * scale, vf * scale**2, last, rank)
    cov = None if g.cov is None else g.cov * scale**2
    return [Gradient(out.mean, out.var, cov=cov, tokens=tokens)] + rest


@rule("ReduceL2")
def reduce_l2(grads, ctx: GradContext):
    """y = ||x|| over the reduced axes: ``dx_i = dy x_i / y``. Over many features ``x_i^2 /
    y^2`` is element i's share of the row's second moment, ``w_i = E[x_i^2] / sum_j E[x_j^2]``
    (``1/K`` for K alike features), and ``E[x_i / y] = E[x_i] / sqrt(sum_j E[x_j^2])``:
    ``E[dx_i] = E[dy] E[x_i / y]``, ``E[dx_i^2] = E[dy^2] w_i`` (dy taken independent of
    the row's direction)."""
    x = ctx.x(0)
    shape = ctx.in_shape(0)
    rank = len(shape)
    axes = _axes(ctx, rank)
    full = np.broadcast_to(np.asarray(x.var + x.mean**2, np.float64),
                           np.broadcast_shapes(np.shape(x.mean), np.shape(x.var), (1,) * rank))
    sizes = [shape[a] if full.shape[a] == 1 else 1 for a in range(rank)]
    row = full.sum(axis=tuple(axes), keepdims=True) * np.prod([sizes[a] for a in axes])
    share = full / np.maximum(row, 1e-300)
    direction = np.asarray(x.mean, np.float64) / np.sqrt(np.maximum(row, 1e-300))
    m, v = grads[0].total()
    mean = m * direction
    return [Gradient(mean, np.maximum((v + m * m) * share - mean**2, 0.0))] + \
        [None] * (len(ctx.node.input) - 1)
