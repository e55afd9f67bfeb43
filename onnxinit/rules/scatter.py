"""Scatters by constant indices: ScatterND, ScatterElements (and the deprecated Scatter).

Indices computed from signals of variance 0 (``TopK(s, k).indices`` of an exactly known s)
are as constant (exact_values.py).

``y = data`` with ``updates`` written at constant indices. Nothing is mixed: each element of y
is an element of data or of updates, so its statistics are that element's. Exporters write a
recurrence's steps this way (a scan unrolled into one ScatterND per step into a zero tensor,
``y[:, t] = h_t``), and a key/value cache its new entries; a Gather of one step then reads
that step's statistics, and an unwritten slot reads data's (0 for a zero tensor), where the
statistics pooled over the tensor would give every step the average of all steps.

What is modelled: per-element means and variances, kept along every axis where they vary
(the batch axis too, where the writes differ by sample). What is not: the distribution's
description (source, mixture) and the correlation fields of data and updates (their
elements' covariance across tokens or positions), which a new Moments drops (except the
token field of a sequence written step by step from joint draws, :mod:`.token_scatter`); reductions
other than ``none`` (a sum of overlapping writes needs their joint law) go to the fallback.
"""

from __future__ import annotations

import numpy as np

from .context import RuleContext, RuleError
from .exact_values import exact_tensor
from .layout import drop_constant_axes
from .registry import rule
from .token_scatter import scattered_field

SCATTER_CAP = 1 << 20  # elements of data whose statistics are spelled out one by one


def _operand(inputs, ctx: RuleContext, index: int, shape: tuple[int, ...]):
    """(mean, var) of input ``index`` broadcast to ``shape``, as writable arrays; a constant
    input has its values as means and variance 0."""
    x = inputs[index]
    if x is None:
        value = ctx.const(index)
        if value is None:
            raise RuleError(f"input {index} is neither a signal nor a constant")
        mean = np.asarray(value, dtype=np.float64)
        var = np.zeros_like(mean)
    else:
        mean, var = x.mean, x.var
    # C order: the writes go through reshaped views (numpy's default "K" order would lay a
    # broadcast axis out innermost, and the reshape would copy)
    return (np.array(np.broadcast_to(mean, shape), order="C"),
            np.array(np.broadcast_to(var, shape), order="C"))


def _constant_indices(ctx: RuleContext) -> tuple[np.ndarray, tuple[int, ...]]:
    """(the constant indices, data's static shape) of a scatter that writes each element
    once, the last write winning (reduction ``none``; another combines overlapping writes)."""
    reduction = ctx.attr("reduction", "none")
    if reduction != "none":
        raise RuleError(f"reduction '{reduction}' combines overlapping writes")
    indices = ctx.const(1)
    if indices is None:  # computed from signals known exactly (TopK of a tied row)
        indices = exact_tensor(ctx, ctx.node.input[1])
    if indices is None:
        raise RuleError("the indices are not constant")
    shape = tuple(int(d) for d in ctx.in_shape(0))
    if int(np.prod(shape, dtype=np.int64)) > SCATTER_CAP:
        raise RuleError(f"data of {int(np.prod(shape))} elements is too large to spell out")
    return np.asarray(indices, dtype=np.int64), shape


def _written(inputs, ctx: RuleContext, shape, update_shape, targets: np.ndarray, inner=()):
    """data's statistics with the updates' written at the flat ``targets`` (each a slot of
    ``inner`` trailing elements; the last write to a slot wins), constant axes dropped."""
    mean, var = _operand(inputs, ctx, 0, shape)
    upd_mean, upd_var = _operand(inputs, ctx, 2, update_shape)
    reversed_first = np.unique(targets[::-1], return_index=True)[1]
    last = targets.size - 1 - reversed_first
    slots = (-1,) + tuple(inner)
    for out, upd in ((mean, upd_mean), (var, upd_var)):
        out.reshape(slots)[targets[last]] = upd.reshape(slots)[last]
    return drop_constant_axes(mean, var)


@rule("ScatterND")
def scatter_nd(inputs, ctx: RuleContext):
    """``y = data; y[indices[i]] = updates[i]`` for each index tuple (of the first k axes,
    k = indices.shape[-1]; later tuples win): ``E y_j, Var y_j`` are those of the element
    written last at j, data's where nothing is written."""
    indices, shape = _constant_indices(ctx)
    k = indices.shape[-1]
    tuples = indices.reshape(-1, k) % np.asarray(shape[:k], dtype=np.int64)
    targets = np.ravel_multi_index(tuples.T, shape[:k]) if k else np.zeros(1, np.int64)
    out = _written(inputs, ctx, shape, indices.shape[:-1] + shape[k:], targets, shape[k:])
    return [scattered_field(ctx, out, indices, shape)]


@rule("ScatterElements", "Scatter")
def scatter_elements(inputs, ctx: RuleContext):
    """``y = data; y[..., indices[i, j], ...] = updates[i, j]`` along ``axis`` (the element's
    other coordinates its own; later elements win): ``E y, Var y`` of the element written last
    at each position, data's where nothing is written."""
    indices, shape = _constant_indices(ctx)
    axis = int(ctx.attr("axis", 0)) % len(shape)
    indices = indices % shape[axis]
    coords = list(np.indices(indices.shape, dtype=np.int64))
    coords[axis] = indices
    targets = np.ravel_multi_index(tuple(c.ravel() for c in coords), shape)
    return [_written(inputs, ctx, shape, indices.shape, targets)]
