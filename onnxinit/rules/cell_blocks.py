"""Quadratures a block of cells (columns) at a time: each block's function values stay in
cache, and each cell's sums are bit for bit those of the evaluation over all cells at once.

- :func:`broadcasts_nothing`, :func:`flat_values`: whether a chain has no constant laid out
  along an axis, and its values on a block of flattened cells;
- :func:`column_blocks`, :func:`small_gemm_width`: blocks that a BLAS product computes as it
  computes the whole product;
- :func:`blocked_sums`: :func:`.gaussian.gaussian_moments`' weighted sums over the nodes, by
  blocks, each distinct cell (its mean and standard deviation, bit for bit) evaluated once: a
  mixture of experts' gathered weights give every token k rows of the same statistics.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .distinct_columns import distinct_columns

def broadcasts_nothing(fn: Callable, ndim: int) -> bool:
    """Whether ``fn`` of a ``[1, ..., 1]`` array of its argument's rank (``ndim`` + 1: a node
    or grid axis first) is one value: no constant of the chain varies along an axis, so that
    any block of cells, flattened, can be evaluated alone."""
    probe = (1,) * (ndim + 1)
    with np.errstate(all="ignore"):
        return np.shape(fn(np.zeros(probe))) == probe


def flat_values(fn: Callable, x: np.ndarray, ndim: int) -> np.ndarray:
    """``fn`` of a block ``x`` ``[rows, cells]`` of flattened cells, for an ``fn`` that
    :func:`broadcasts_nothing` (``ndim`` as there): evaluated at the argument's rank (the
    cells on the last axis), ``[rows, cells]``, float64, non-finite values kept."""
    shaped = x.reshape(x.shape[:1] + (1,) * (ndim - 1) + x.shape[1:])
    with np.errstate(all="ignore"):
        y = np.asarray(fn(shaped), dtype=np.float64)
    return np.broadcast_to(y, shaped.shape).reshape(x.shape)


_ALIGN = 256  # columns: where column_blocks start


def column_blocks(columns: int, width: int, least: int = _ALIGN) -> list[slice]:
    """Blocks of about ``width`` columns that start at multiples of ``_ALIGN``, each at least
    ``least`` (and ``_ALIGN``) wide: a narrow rest joins the block before it. A matrix product
    of a block then computes each column as a product of all columns does: BLAS kernels treat
    a product's last ``columns % 4`` (``% 8`` ...) columns apart, and a block of one column is a
    dot product (``least``: see :func:`small_gemm_width`)."""
    least = max(least, _ALIGN)
    width = -(-max(width, least) // _ALIGN) * _ALIGN
    starts = list(range(0, columns, width))
    if len(starts) > 1 and columns - starts[-1] < least:
        starts.pop()
    return [slice(a, b) for a, b in zip(starts, starts[1:] + [columns])]


_SMALL_GEMM = 1_000_000  # M N K up to which OpenBLAS takes its small-matrix kernel


def small_gemm_width(rows: int, depths, columns: int) -> int:
    """The fewest columns a block needs for each ``[rows, depth] @ [depth, block]`` product to
    take the kernel the product with all ``columns`` takes: OpenBLAS multiplies a product of
    at most ``_SMALL_GEMM`` multiply-adds with another kernel, which rounds the last columns
    otherwise (measured: a block of 769 of 3,329 columns differed in its last one)."""
    large = [d for d in depths if rows * d * columns > _SMALL_GEMM]
    return max((_SMALL_GEMM // (rows * d) + 1 for d in large), default=1)


_VALUES_BLOCK = 1 << 16  # function values of a block of blocked_sums (in cache)
_DISTINCT_SHARE = 0.75  # distinct cells up to which blocked_sums evaluates those alone


def blocked_sums(fn: Callable, mean: np.ndarray, std: np.ndarray, shift: np.ndarray,
                 nodes: np.ndarray, weights: np.ndarray, step: int):
    """``(sum w, sum w y, sum w y^2)`` over the standard-normal ``nodes`` of
    ``y = fn(mean + std z) - shift`` per cell (flat, or a scalar first sum), for an ``fn`` that
    :func:`broadcasts_nothing` on ``mean``'s rank: ``step`` nodes at a time, each chunk's sums
    added in order as :func:`.gaussian.gaussian_moments` adds those of the whole array. A chunk
    whose values are all finite sums by matrix-vector products of its blocks; a chunk with a
    non-finite value sums every cell over its finite values, element by element, as the whole
    array's chunk does then."""
    ndim = mean.ndim
    flat = [np.ascontiguousarray(a).reshape(-1) for a in (mean, std, shift)]
    cells = flat[0].size
    pick, spread = _distinct(flat[0], flat[1])
    if pick is not None:
        flat = [a[pick] for a in flat]
    mean, std, shift = flat
    blocks = column_blocks(mean.size, _VALUES_BLOCK // step)
    acc0, acc1, acc2 = 0.0, 0.0, 0.0
    for i in range(0, nodes.size, step):
        z, w = nodes[i:i + step, None], weights[i:i + step]
        c1, c2 = np.empty(mean.size), np.empty(mean.size)
        finite = True
        for b in blocks:
            y = flat_values(fn, mean[b] + std[b] * z, ndim) - shift[b]
            if not np.isfinite(y).all():
                finite = False
                break
            c1[b], c2[b] = w @ y, w @ (y * y)
        if finite:
            acc0, acc1, acc2 = acc0 + w.sum(), acc1 + c1, acc2 + c2
            continue
        c0 = np.empty(mean.size)
        for b in blocks:
            y = flat_values(fn, mean[b] + std[b] * z, ndim) - shift[b]
            kept = np.isfinite(y)
            wf = np.where(kept, w[:, None], 0.0)
            y = np.where(kept, y, 0.0)
            c0[b], c1[b], c2[b] = wf.sum(axis=0), (wf * y).sum(axis=0), (wf * y * y).sum(axis=0)
        acc0, acc1, acc2 = acc0 + c0, acc1 + c1, acc2 + c2
    if spread is not None:
        acc1, acc2 = acc1[spread], acc2[spread]
        acc0 = acc0[spread] if np.ndim(acc0) else acc0
    assert np.size(acc1) == cells
    return acc0, acc1, acc2


def _distinct(mean: np.ndarray, std: np.ndarray):
    """(the cells to evaluate, each cell's place among them), or (None, None) when more than
    ``_DISTINCT_SHARE`` of the cells are distinct. Cells of equal bits are evaluated once:
    those before the last multiple of ``_ALIGN`` only, padded to such a multiple, so that the
    last cells keep their place relative to the end (a BLAS kernel treats the last
    ``columns % 4`` apart)."""
    body = mean.size - mean.size % _ALIGN
    found = distinct_columns(np.stack([mean[:body], std[:body]]), _DISTINCT_SHARE)
    if found is None:
        return None, None
    first, inverse = found
    padded = -(-first.size // _ALIGN) * _ALIGN
    rest = np.arange(body, mean.size)
    pick = np.concatenate([first, np.full(padded - first.size, first[0]), rest])
    return pick, np.concatenate([inverse, padded + rest - body])
