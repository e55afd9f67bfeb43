"""Central cumulants k2, k3, k4 of an element-wise chain's values at quadrature nodes, per
cell (the columns of :func:`.kurtosis.chain_values`), a block of columns at a time: the
squeeze-excite pools' terms (:mod:`.pool_skewness`) ask for them on up to 56 K cells x 288
nodes, whose whole arrays (130 MB) would pass through memory five times."""

from __future__ import annotations

import numpy as np

from .cell_blocks import broadcasts_nothing, column_blocks, flat_values
from .gaussian import compose
from .kurtosis import chain_values, mixture_nodes, node_rule

_COLUMN_BLOCK = 1 << 15  # values of a [nodes, columns] block (in cache)


def cumulants(y: np.ndarray, w: np.ndarray):
    """Central k2, k3, k4 per column of values ``y`` [nodes, C] of weights ``w``: a block of
    columns at a time (each column's sums are its own, the same in a block:
    :func:`.gaussian.column_blocks`)."""
    blocks = column_blocks(y.shape[1], _COLUMN_BLOCK // max(1, y.shape[0]))
    if len(blocks) == 1:
        return _column_cumulants(y, w)
    out = np.empty((3, y.shape[1]))
    for cols in blocks:
        out[:, cols] = _column_cumulants(y[:, cols], w)
    return out[0], out[1], out[2]


def _column_cumulants(y: np.ndarray, w: np.ndarray):
    d = y - w @ y
    d2 = d * d
    k2 = w @ d2
    d *= d2
    k3 = w @ d
    d2 *= d2
    return k2, k3, w @ d2 - 3 * k2**2


def chain_cumulants(mean, var, chain, c: int, rank: int, v=None, coarse: bool = False):
    """:func:`cumulants` of :func:`.kurtosis.chain_values`' values and weights (the same
    arguments), ``[cells]`` each; None where f is not finite. A chain whose constants vary
    along no axis is evaluated a block of columns at a time, its values those of
    ``chain_values`` value for value, the blocks those of :func:`cumulants`: the whole
    ``[nodes, cells]`` array is never made."""
    fn = compose(chain)
    if not broadcasts_nothing(fn, rank - 1):
        y, w = chain_values(mean, var, chain, c, rank, v, coarse)
        return cumulants(y, w) if np.all(np.isfinite(y)) else None
    nodes, weights = node_rule(coarse)
    channel = (1, c) + (1,) * (rank - 2)
    mean, var = (np.asarray(a, dtype=np.float64) for a in (mean, var))
    shape = np.broadcast_shapes(mean.shape, var.shape, channel)
    mean, var = np.broadcast_to(mean, shape), np.broadcast_to(var, shape)
    if v is None or not np.any(v > 0):
        stds, w = [np.sqrt(var).reshape(-1)], weights
    else:
        sig2, wi = mixture_nodes(np.broadcast_to(v, (c,)))
        stds = [np.sqrt(var * s2.reshape(channel)).reshape(-1) for s2 in sig2]
        w = np.concatenate([weights * a for a in wi])
    mean = mean.reshape(-1)
    rows = len(stds) * nodes.size
    blocks = column_blocks(mean.size, _COLUMN_BLOCK // rows)
    out = np.empty((3, mean.size))
    buffer = np.empty(rows * max(b.stop - b.start for b in blocks))
    for cols in blocks:
        n = cols.stop - cols.start
        y = buffer[:rows * n].reshape(rows, n)
        for i, std in enumerate(stds):
            x = std[None, cols] * nodes[:, None]
            x += mean[None, cols]
            y[i * nodes.size:(i + 1) * nodes.size] = flat_values(fn, x, rank - 1)
        if not np.all(np.isfinite(y)):
            return None
        out[:, cols] = _column_cumulants(y, w)
    return out[0], out[1], out[2]


__all__ = ["chain_cumulants", "cumulants"]
