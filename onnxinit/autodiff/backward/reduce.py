"""Reductions over axes given as an input (opset 18 forms; lowering upgrades older models)."""

from __future__ import annotations

import numpy as np

from .registry import backward


def _reduced_axes(ctx, rank: int) -> list[int] | None:
    """The reduced axes (non-negative), or None when the node reduces nothing."""
    axes_name = ctx.input(1)
    if axes_name:
        axes = ctx.required_value(axes_name, "axes").reshape(-1).tolist()
    else:
        axes = ctx.attr("axes", None)
    if not axes:
        return None if ctx.attr("noop_with_empty_axes", 0) else list(range(rank))
    return sorted(a % rank for a in axes)


def _reduce_rule(local):
    """A rule from ``local(ctx, x, g_kept, count)``, where ``g_kept`` is dY reshaped with the
    reduced axes kept as size 1 (it broadcasts against X)."""

    def rule(ctx, grads):
        x = ctx.node.input[0]
        x_shape = ctx.shape(x)
        axes = _reduced_axes(ctx, len(x_shape))
        if axes is None:
            return [grads[0], None][: len(ctx.node.input)]
        kept = [1 if i in axes else d for i, d in enumerate(x_shape)]
        g_kept = ctx.emit("Reshape", [grads[0], ctx.ints(kept)])
        count = int(np.prod([x_shape[a] for a in axes]))
        return [local(ctx, x, g_kept, kept, count), None][: len(ctx.node.input)]

    rule.__doc__ = local.__doc__
    return rule


def _expand(ctx, small, x):
    return ctx.emit("Expand", [small, ctx.ints(ctx.shape(x))])


def _sum_local(ctx, x, g_kept, kept, count):
    """Y = sum_axes X:  dX = dY broadcast over the reduced axes."""
    return _expand(ctx, g_kept, x)


def _mean_local(ctx, x, g_kept, kept, count):
    """Y = mean_axes X:  dX = dY / count broadcast over the reduced axes."""
    return _expand(ctx, ctx.emit("Mul", [g_kept, ctx.const(1.0 / count, like=x)]), x)


def _sum_square_local(ctx, x, g_kept, kept, count):
    """Y = sum_axes X^2:  dX = 2 X dY."""
    return ctx.emit("Mul", [ctx.emit("Mul", [g_kept, ctx.const(2.0, like=x)]), x])


def _l2_local(ctx, x, g_kept, kept, count):
    """Y = sqrt(sum_axes X^2):  dX = X dY / Y, and 0 where Y = 0 (X is 0 there; as torch's
    norm: a zero vector, a padded token before ``F.normalize``, gave 0 / 0 = NaN)."""
    y_kept = ctx.emit("Reshape", [ctx.node.output[0], ctx.ints(kept)])
    zero = ctx.emit("Equal", [y_kept, ctx.const(0.0, like=x)])
    y_safe = ctx.emit("Where", [zero, ctx.const(1.0, like=x), y_kept])
    return ctx.emit("Mul", [ctx.emit("Div", [g_kept, y_safe]), x])


def _extreme_local(ctx, x, g_kept, kept, count):
    """Y = max_axes X (or min):  dX = dY where X equals Y (every tie gets it), else 0."""
    y_kept = ctx.emit("Reshape", [ctx.node.output[0], ctx.ints(kept)])
    chosen = ctx.emit("Equal", [x, y_kept])
    return _expand(ctx, ctx.emit("Where", [chosen, g_kept, ctx.const(0.0, like=x)]), x)


backward("ReduceSum")(_reduce_rule(_sum_local))
backward("ReduceMean")(_reduce_rule(_mean_local))
backward("ReduceSumSquare")(_reduce_rule(_sum_square_local))
backward("ReduceL2")(_reduce_rule(_l2_local))
backward("ReduceMax", "ReduceMin")(_reduce_rule(_extreme_local))
