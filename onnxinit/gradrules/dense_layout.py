"""A gradient tracked per element of one sample, and the element moves of the layout ops.

The layout backward rules (:mod:`.shape`) move a gradient's elements back to where they came
from. Statistics tracked per channel (with a position profile) or per element are spelled out
per element of one sample (at most MAX_DENSE values), moved, and folded back to per-channel
statistics with the profile where the layout is a convolution's ``[N, C, *spatial]``.
"""

from __future__ import annotations

import numpy as np

from .gradient import Gradient, along

MAX_DENSE = 1 << 20


def per_element(g: Gradient, shape) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean, var) per element of one sample, ``[1, *shape[1:]]``; None when too many."""
    one = (1, *shape[1:])
    if int(np.prod(one)) > MAX_DENSE:
        return None
    g = g.expand_rank(len(shape))
    try:
        mean = np.broadcast_to(g.mean, one)
        var = np.broadcast_to(g.var, one)
    except ValueError:
        return None
    if g.profile is not None and len(shape) > 2 and g.profile.shape == tuple(shape[2:]):
        second = (var + mean**2) * g.profile
        var = np.maximum(second - mean**2, 0.0)
    return mean, var


def from_per_element(mean, var, shape, sample_var_share: float | None = None) -> Gradient:
    """Per-channel statistics and the position profile of a convolution-layout gradient
    given per element of one sample; other layouts keep the per-element arrays."""
    rank = len(shape)
    if rank <= 2:
        return Gradient(mean.reshape((1, *shape[1:])), var.reshape((1, *shape[1:])))
    c = shape[1]
    mean = mean.reshape(c, -1)
    var = var.reshape(c, -1)
    m = mean.mean(axis=1)
    v = var.mean(axis=1) + ((mean - m[:, None]) ** 2).mean(axis=1)
    second = (var + mean**2).sum(axis=0)
    profile = (second / second.mean()).reshape(shape[2:]) if second.mean() > 0 else None
    s = int(np.prod(shape[2:]))
    return along(m, v, 1, rank, var.mean(axis=1) / s, profile)


def relayout(g: Gradient, out_shape, in_shape) -> Gradient:
    """The gradient of a reshape's input (same elements, same order)."""
    if len(out_shape) >= 1 and len(in_shape) >= 1 and out_shape[0] == in_shape[0]:
        if g.rank == 0:
            if len(in_shape) > 2:
                s = int(np.prod(in_shape[2:]))
                return Gradient(g.mean, g.var, g.var / s)
            return g
        dense = per_element(g, out_shape)
        if dense is not None:
            return from_per_element(*dense, in_shape)
    return g.pooled()


def blocks_to_space(a: np.ndarray, b: int, mode: str) -> np.ndarray:
    """ONNX DepthToSpace of an ``[N, C b^2, H, W]`` array (DCR: channel (i b + j) C + c, CRD:
    c b^2 + i b + j goes to [c, h b + i, w b + j])."""
    n, c, h, w = a.shape
    if mode == "DCR":
        t = a.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        t = a.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return t.reshape(n, c // (b * b), h * b, w * b)


def space_to_blocks(a: np.ndarray, b: int) -> np.ndarray:
    """ONNX SpaceToDepth (DCR order) of an ``[N, C, H b, W b]`` array."""
    n, c, h, w = a.shape
    t = a.reshape(n, c, h // b, b, w // b, b).transpose(0, 3, 5, 1, 2, 4)
    return t.reshape(n, c * b * b, h // b, w // b)


__all__ = ["MAX_DENSE", "blocks_to_space", "from_per_element", "per_element", "relayout",
           "space_to_blocks"]
