"""Sums weighted by a large constant weight, in bounded memory.

A dense layer's rule needs ``mu @ W`` and ``nu @ W**2`` in float64. Converting a 8192 x 8192
float32 weight to float64 and squaring it costs four times the weight's own size; a weight read
from external data is a memory map that should be read once, a piece at a time. These helpers
take the weight in its own dtype (any array, a memory map or a transposed view of one), convert
a block of at most :data:`BLOCK_BYTES` of float64 at a time, and accumulate. Blocks that fit in
the processor's cache make this several times faster than converting the whole weight (0.11 s
instead of 0.5 s of CPU for a 8192 x 8192 float32 weight, one thread), and read each byte of
the weight once. A weight that fits in one block is computed in one product.
"""

from __future__ import annotations

import numpy as np

BLOCK_BYTES = 1 << 20  # float64 bytes of weight converted at once (cache-sized)


def _block(size: int, other: int, block_bytes: int) -> int:
    return max(1, block_bytes // (8 * max(1, other)))


def weighted_sums(mu: np.ndarray, nu: np.ndarray, w: np.ndarray,
                  block_bytes: int = BLOCK_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """``(mu @ W, nu @ W**2)`` in float64 for ``W`` of shape [K, N] (``mu``, ``nu``: [..., K]).

    Blocks follow the weight's memory layout: row blocks (partial sums over K) for a C-ordered
    weight, column blocks (slices of the output) for a transposed view, so each block is a
    contiguous range of the weight's bytes."""
    mu = np.asarray(mu, dtype=np.float64)
    nu = np.asarray(nu, dtype=np.float64)
    k, n = w.shape
    mu_row, nu_row = _one_row(mu), _one_row(nu)
    if mu_row is not None or nu_row is not None:
        # every row the same (statistics broadcast along the leading axes, often as a view
        # of zero strides, which matmul walks row by row): one row, then spread
        mean, var = weighted_sums(mu if mu_row is None else mu_row,
                                  nu if nu_row is None else nu_row, w, block_bytes)
        return _spread(mean, mu.shape[:-1]), _spread(var, nu.shape[:-1])
    if mu.ndim > 2 or nu.ndim > 2:  # a stack of rows: one matrix product of [rows, K]
        mean, var = weighted_sums(mu.reshape(-1, k), nu.reshape(-1, k), w, block_bytes)
        return mean.reshape(mu.shape[:-1] + (n,)), var.reshape(nu.shape[:-1] + (n,))
    if w.size * 8 <= block_bytes:
        w64 = np.asarray(w, dtype=np.float64)
        return mu @ w64, nu @ (w64 * w64)
    mean = np.zeros(mu.shape[:-1] + (n,))
    var = np.zeros(nu.shape[:-1] + (n,))
    # each block converted into one reused buffer and squared in place: no fresh temporaries
    if w.flags.f_contiguous and not w.flags.c_contiguous:  # a transposed view: columns
        step = _block(n, k, block_bytes)
        buffer = np.empty((step, k)).T
        for start in range(0, n, step):
            block = buffer[:, :min(step, n - start)]
            np.copyto(block, w[:, start:start + step], casting="unsafe")
            mean[..., start:start + step] = mu @ block
            np.multiply(block, block, out=block)
            var[..., start:start + step] = nu @ block
        return mean, var
    step = _block(k, n, block_bytes)
    buffer = np.empty((min(step, k), n))
    for start in range(0, k, step):
        block = buffer[:min(step, k - start)]
        np.copyto(block, w[start:start + step], casting="unsafe")
        mean += mu[..., start:start + step] @ block
        np.multiply(block, block, out=block)
        var += nu[..., start:start + step] @ block
    return mean, var


def _one_row(x: np.ndarray) -> np.ndarray | None:
    """x's single row ``[K]`` when x has several rows along its leading axes and they are all
    equal, else None."""
    if x.ndim < 2 or x.size == x.shape[-1]:
        return None
    rows = x.reshape(-1, x.shape[-1])
    return rows[0] if (rows == rows[0]).all() else None


def _spread(row: np.ndarray, lead: tuple) -> np.ndarray:
    """``row`` ``[..., N]`` copied to every index of the leading shape ``lead``."""
    return np.array(np.broadcast_to(row, lead + row.shape[-1:]))


def moments_along(table: np.ndarray, axis: int,
                  block_bytes: int = BLOCK_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """(mean, population variance) of ``table`` along ``axis`` in float64, a block of the
    leading axis at a time (partial sums combined by Chan et al.'s pairwise formula)."""
    if table.size * 8 <= block_bytes or table.ndim == 0:
        values = np.asarray(table, dtype=np.float64)
        return values.mean(axis=axis), values.var(axis=axis)
    axis %= table.ndim
    moved = np.moveaxis(table, axis, 0)  # reduce over the leading axis, blocks along it
    rows = moved.shape[0]
    step = _block(rows, int(np.prod(moved.shape[1:])), block_bytes)
    count, mean, m2 = 0, None, None
    buffer = np.empty_like(moved[:step], dtype=np.float64)  # the layout asarray would give
    for start in range(0, rows, step):
        block = buffer[:min(step, rows - start)]
        np.copyto(block, moved[start:start + step], casting="unsafe")
        b_count = block.shape[0]
        b_mean = block.mean(axis=0)
        block -= b_mean
        block *= block
        b_m2 = block.sum(axis=0)
        if mean is None:
            count, mean, m2 = b_count, b_mean, b_m2
            continue
        total = count + b_count
        delta = b_mean - mean
        mean = mean + delta * (b_count / total)
        m2 = m2 + b_m2 + delta**2 * (count * b_count / total)
        count = total
    return mean, m2 / count
