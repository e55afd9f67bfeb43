"""Moments of logits mixed with a mask of the token ids (id_masks.py), for the rules of the
nodes that mix them (Where, Add, Mul on the way to a Softmax)."""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from .id_masks import affine


def mixed_moments(ctx) -> list[Moments] | None:
    """Moments of a node's output that mixes one signal with masks of the token ids
    (:func:`affine`): ``E = mean_s M_s``, ``Var = mean_s V_s + mean_s (M_s - E)^2`` per
    element, samples where it is -inf left out (all -inf: masked); None otherwise."""
    name = ctx.node.output[0]
    found = affine(ctx, name) if len(ctx.node.output) == 1 else None
    if found is None:
        return None
    _, mean_s, var_s = found
    gone = np.isneginf(mean_s)
    kept = np.maximum((~gone).sum(axis=0, keepdims=True), 1)
    with np.errstate(invalid="ignore"):
        mean = np.where(gone, 0.0, mean_s).sum(axis=0, keepdims=True) / kept
        var = (np.where(gone, 0.0, var_s + (mean_s - mean) ** 2)).sum(axis=0, keepdims=True) / kept
    empty = gone.all(axis=0, keepdims=True)
    mean, var = np.where(empty, -np.inf, mean), np.where(empty, 0.0, var)
    if not np.all(np.isfinite(var)):
        return None
    return [exact_compressed(mean, var)]


def exact_compressed(mean: np.ndarray, var: np.ndarray) -> Moments:
    """Moments of the grid without the axes along which it is exactly constant (``finfo.min``
    beside logits of order 1: moments.compressed's relative tolerance would merge them)."""
    for axis in range(mean.ndim):
        if mean.shape[axis] > 1:
            m0, v0 = np.take(mean, [0], axis=axis), np.take(var, [0], axis=axis)
            if np.array_equal(mean, np.broadcast_to(m0, mean.shape)) and np.array_equal(
                    var, np.broadcast_to(v0, var.shape)):
                mean, var = m0, v0
    return Moments(mean, var)


__all__ = ["exact_compressed", "mixed_moments"]
