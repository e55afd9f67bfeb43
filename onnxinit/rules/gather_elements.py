"""GatherElements by constant indices: each output element is one element of data (the
rule, registered in shape.py beside its backward family).

``y[i, j, k] = x[idx[i, j, k], j, k]`` (axis 0; likewise along any axis): nothing is mixed, so
each element of y has the statistics of the element it copies. BigBird's block-sparse attention
gathers its random key and value blocks this way (the indices drawn once, at export): the
values' fixed per-position part (absolute position embeddings: 0.70 of their variance) is a
per-element mean, and the empirical fallback, which keeps an output's statistics along one axis
and pools the rest, turned it into noise; P V, whose output is mostly the average of those
means, read 0.49x of its variance.

What is modelled: per-element means and variances, kept along every axis where they vary. What
is not: the distribution's description and the correlation fields (dropped, as a new Moments
drops them; the scatters, scatter.py, do the same).
"""

from __future__ import annotations

import numpy as np

from ..moments import compressed
from .context import RuleContext, RuleError
from .token_field import grid

GATHER_CAP = 1 << 22  # elements of the output whose statistics are spelled out one by one


def gathered(inputs, ctx: RuleContext):
    """``y[..., i, ...] = x[..., idx[..., i, ...], ...]`` along ``axis``, the other
    coordinates the element's own: ``E y, Var y`` those of the element copied."""
    x = inputs[0]
    if x is None:
        raise RuleError("the data are not a signal")
    indices = ctx.const(1)
    if indices is None:
        raise RuleError("the indices are not constant")
    shape = tuple(int(d) for d in ctx.in_shape(0))
    indices = np.asarray(indices, dtype=np.int64)
    if indices.ndim != len(shape) or indices.size > GATHER_CAP:
        raise RuleError("indices of another rank, or too many to spell out")
    axis = int(ctx.attr("axis", 0)) % len(shape)
    if any(n > s for a, (n, s) in enumerate(zip(indices.shape, shape)) if a != axis):
        raise RuleError("indices longer than the data along an axis other than the gathered one")
    mean, var = grid(x, len(shape))
    # the other axes: the element's own coordinate, so data cut to the indices' extent there
    # (an axis where the statistics do not vary stays of size 1 and broadcasts)
    cut = tuple(slice(None) if a == axis or mean.shape[a] == 1 else slice(0, indices.shape[a])
                for a in range(len(shape)))
    mean, var = mean[cut], var[cut]
    if mean.shape[axis] == 1:  # the same statistics at every index along the axis
        return [compressed(np.array(mean), np.array(var))]
    index = indices % shape[axis]
    picked_mean = np.take_along_axis(np.broadcast_to(mean, _full(mean.shape, indices.shape, axis)),
                                     index, axis=axis)
    picked_var = np.take_along_axis(np.broadcast_to(var, _full(var.shape, indices.shape, axis)),
                                    index, axis=axis)
    return [compressed(picked_mean, picked_var)]


def _full(stat_shape, index_shape, axis: int) -> tuple[int, ...]:
    """The statistics' shape with every other axis at the indices' extent (broadcast), the
    gathered axis at the data's."""
    return tuple(s if a == axis else n for a, (s, n) in enumerate(zip(stat_shape, index_shape)))


__all__ = ["gathered"]
