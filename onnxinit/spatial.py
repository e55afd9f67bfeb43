"""Position classes: statistics that vary with the position in a feature map, in a size that does
not grow with the map.

A zero-padded convolution gives positions near the border fewer taps, hence other means and
variances; the next padded convolution spreads the difference one kernel radius further in, and
so on through the stack. Positions whose windows see the same sequence of input classes (or of
padding) along an axis have the same statistics, so each spatial axis is described by a *map*
from index to class: the first few indices (the begin border), one class for the whole interior,
the last few (the end border). A window op computes its output map from the input's exactly: an
output index's class is the tuple of input classes (or padding) under its taps, for any kernel,
stride, dilation and padding (:func:`window`). Statistics are held per *cell* (one class per
axis), ``[1, C, K_0, ..., K_{n-1}]``; the per-channel totals follow by the law of total variance
with each cell weighted by the number of positions in it (:func:`attach`).

Exact for: Conv (any groups, stride, dilation, padding), the element-wise rules, BatchNorm /
InstanceNorm / GroupNorm (per-channel affine maps of the cells), MaxPool / AveragePool (per output
class), global pools, Add / Mul of two such tensors (joint classes), Concat / Slice / Split along
the channel axis. Other rules see the per-channel totals in ``Moments.mean/var``, as before.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from .class_gather import gather_taps
from .crop_correlation import cropped
from .moments import Moments, Source, Spatial
from .views import broadcast_arrays, broadcast_to

DENSE_CAP = 1 << 20  # cells up to which a spatial tensor is expanded per position (Flatten)


# ---------------------------------------------------------------------------------------------
# reading


def class_weights(maps: Sequence[np.ndarray]) -> np.ndarray:
    """Fraction of the positions in each cell, ``[K_0, ..., K_{n-1}]`` (sums to 1; read-only,
    shared between calls on equal maps)."""
    return _class_weights(tuple(_key(m) for m in maps))


def _key(a) -> tuple:
    """A hashable stand-in for a small integer array: its values (for the caches below, which
    save the repeated work of a deep stack's hundreds of layers on the same few maps)."""
    a = np.asarray(a)
    return a.dtype.str, a.shape, a.tobytes()


def _array(key: tuple) -> np.ndarray:
    dtype, shape, data = key
    return np.frombuffer(data, dtype=dtype).reshape(shape)


@functools.lru_cache(maxsize=256)
def _class_weights(keys: tuple) -> np.ndarray:
    w = np.ones(())
    for key in keys:
        m = _array(key)
        counts = np.bincount(m).astype(np.float64) / m.size
        w = np.multiply.outer(w, counts)
    w.flags.writeable = False
    return w


def _batch_pooled(mean, var) -> tuple[np.ndarray, np.ndarray]:
    if mean.shape[0] > 1:  # statistics per sample: pool them (law of total variance)
        m = mean.mean(axis=0, keepdims=True)
        var = var.mean(axis=0, keepdims=True) + ((mean - m) ** 2).mean(axis=0, keepdims=True)
        mean = m
    return mean, var


def positions(x: Moments, shape: Sequence[int]) -> Spatial | None:
    """``x``'s statistics per position class (``x.spatial`` when it has them; per position
    when ``x`` tracks spatial axes densely; one class per axis otherwise); None for a tensor
    without spatial axes."""
    rank = len(shape)
    if rank < 3:
        return None
    if x.spatial is not None:
        return x.spatial
    x = x.expand_rank(rank)
    if x.rank != rank and not x.is_scalar:
        return None
    mean = np.asarray(x.mean).reshape((1,) * (rank - x.mean.ndim) + x.mean.shape)
    var = np.asarray(x.var).reshape((1,) * (rank - x.var.ndim) + x.var.shape)
    full = np.broadcast_shapes(mean.shape, var.shape)
    maps = tuple(
        np.arange(n) if full[2 + i] > 1 else np.zeros(n, dtype=np.int64)
        for i, n in enumerate(shape[2:])
    )
    if full[0] > 1:
        mean, var = _batch_pooled(*np.broadcast_arrays(mean, var))
        return Spatial(maps, Moments(mean, var))
    return Spatial(maps, Moments(mean, var, x.source, x.mixture))


def within_variance(sp: Spatial, channels: int) -> np.ndarray:
    """Per channel, the variance at one position averaged over the positions (the spread of
    the position means excluded): ``sum_k w_k Var_k``, ``[channels]``. Computed once per
    description (a Spatial is not changed in place; the Conv, the element-wise correlation
    and the residual sum each ask), a copy returned."""
    kept = sp.__dict__.setdefault("_within", {})
    v = kept.get(channels)
    if v is None:
        var = broadcast_to(sp.cells.var, np.broadcast_shapes(sp.cells.var.shape,
                                                                (1, 1, *sp.classes)))
        w = class_weights(sp.maps)
        v = (var[0] * w).reshape(var.shape[1], -1).sum(axis=1)
        v = kept[channels] = broadcast_to(v, (channels,)).copy()
    return v.copy()


def dense(sp: Spatial) -> tuple[np.ndarray, np.ndarray]:
    """Per-position (mean, var) ``[1, C, *S]`` of a spatial description."""
    mean, var = np.broadcast_arrays(sp.cells.mean, sp.cells.var)
    index = _outer_index(sp.maps, mean.ndim)
    return mean[index], var[index]


def _outer_index(maps: Sequence[np.ndarray], rank: int) -> tuple:
    n = len(maps)
    index = [slice(None)] * (rank - n)
    for i, m in enumerate(maps):
        shape = [1] * n
        shape[i] = m.size
        index.append(m.reshape(shape))
    return tuple(index)


# ---------------------------------------------------------------------------------------------
# building


def _pooled_source(cells: Moments, weights: np.ndarray, axes: tuple[int, ...]) -> Source | None:
    """The cells' source Gaussians pooled per channel (law of total variance), chain kept: what
    a rule that samples one distribution per channel gets (as before per-position statistics)."""
    src = cells.source
    if src is None:
        return None
    rank = cells.mean.ndim
    mean = np.asarray(src.mean).reshape((1,) * (rank - np.ndim(src.mean)) + np.shape(src.mean))
    var = np.asarray(src.var).reshape((1,) * (rank - np.ndim(src.var)) + np.shape(src.var))
    if mean.ndim != rank or var.ndim != rank:
        return None
    shape = np.broadcast_shapes(mean.shape, var.shape, cells.mean.shape)
    mean, var = broadcast_to(mean, shape), broadcast_to(var, shape)
    m, v = _pool(mean, var, weights, axes)
    return Source(m, v, src.chain)


def _pool(mean, var, weights, axes):
    """Weighted mean and law-of-total-variance over the trailing class axes."""
    lead = mean.shape[:mean.ndim - weights.ndim]
    w = weights.reshape(-1)
    mf = mean.reshape(lead + (-1,))
    m = mf @ w
    v = var.reshape(lead + (-1,)) @ w + ((mf - m[..., None]) ** 2) @ w
    shape = lead + (1,) * weights.ndim
    return m.reshape(shape), v.reshape(shape)


def attach(cells: Moments, maps: Sequence[np.ndarray], corr=None) -> Moments:
    """A Moments whose ``mean``/``var`` are the per-channel totals of ``cells`` over all
    positions (each cell weighted by its share of the positions):

        E_c = sum_k w_k E_ck,   Var_c = sum_k w_k Var_ck + sum_k w_k (E_ck - E_c)^2

    carrying ``Spatial(maps, cells, corr)``; plain per-channel moments (cells kept as they are,
    source and mixture included) when there is one class per axis and no correlation."""
    maps = tuple(np.asarray(m, dtype=np.int64) for m in maps)
    rank = 2 + len(maps)
    cells = cells.expand_rank(rank)
    if cells.rank != rank:  # a scalar: one cell
        cells = Moments(np.reshape(cells.mean, (1,) * rank), np.reshape(cells.var, (1,) * rank),
                        cells.source, cells.mixture)
    classes = tuple(int(m.max()) + 1 if m.size else 1 for m in maps)
    if all(k == 1 for k in classes) and corr is None:
        return Moments(cells.mean, cells.var, cells.source, cells.mixture)
    weights = class_weights(maps)
    axes = tuple(range(2, rank))
    mean, var = broadcast_arrays(cells.mean, cells.var)
    shape = mean.shape[:2] + classes
    mean, var = broadcast_to(mean, shape), broadcast_to(var, shape)
    m, v = _pool(mean, var, weights, axes)
    return Moments(m, v, _pooled_source(cells, weights, axes), None,
                   spatial=Spatial(maps, cells, corr))


def with_corr(x: Moments, corr, maps: Sequence[np.ndarray]) -> Moments:
    """``x`` (built by :func:`attach` from cells on ``maps``) with another correlation; the
    totals are not recomputed."""
    if x.spatial is None:  # one class per axis: x is its own cell
        return Moments(x.mean, x.var, x.source, x.mixture,
                       spatial=Spatial(tuple(maps), x, corr))
    sp = x.spatial
    return Moments(x.mean, x.var, x.source, x.mixture,
                   spatial=Spatial(sp.maps, sp.cells, corr))


def pad(x: Moments, shape: Sequence[int], pads: dict[int, tuple[int, int]],
        value: float) -> Moments | None:
    """A constant Pad (value v) of spatial axes only, pads non-negative, per position class: the
    padded indices of axis d form one new class along d (mean v, variance 0), the others keep
    their input class. The correlation is kept as it is (as a Conv's own zero padding keeps
    it: the change of correlation near the border is not modelled). The cells' source (a
    Gaussian and its element-wise chain f) is kept when f maps v to v (ReLU, ReLU6 and zero
    padding: the padded cells are the point mass v of the same chain), else dropped with the
    mixture. None where it does not apply."""
    rank = len(shape)
    if rank < 3 or any(a < 2 or b < 0 or e < 0 for a, (b, e) in pads.items()):
        return None
    sp = positions(x, shape)
    if sp is None:
        return None
    mean, var = np.broadcast_arrays(sp.cells.mean, sp.cells.var)
    full = mean.shape[:2] + sp.classes
    mean = np.array(np.broadcast_to(mean, full), dtype=np.float64)
    var = np.array(np.broadcast_to(var, full), dtype=np.float64)
    src = sp.cells.source
    if src is not None and src.chain:
        fixed = np.full(full, value)
        with np.errstate(all="ignore"):
            for f in src.chain:
                fixed = f.fn(fixed)
        fixed = np.asarray(fixed, dtype=np.float64)
        if fixed.shape == full and np.allclose(fixed, value, rtol=0, atol=1e-12):
            src_mean = np.array(np.broadcast_to(np.reshape(src.mean, (1,) * (rank - np.ndim(
                src.mean)) + np.shape(src.mean)), full), dtype=np.float64)
            src_var = np.array(np.broadcast_to(np.reshape(src.var, (1,) * (rank - np.ndim(
                src.var)) + np.shape(src.var)), full), dtype=np.float64)
        else:
            src = None
    else:
        src = None
    maps = list(sp.maps)
    for axis, (b, e) in sorted(pads.items()):
        if b == 0 and e == 0:
            continue
        d = axis - 2
        k = mean.shape[axis]
        maps[d] = np.concatenate([np.full(b, k), np.asarray(maps[d], dtype=np.int64),
                                  np.full(e, k)]).astype(np.int64)
        widths = [(0, 0)] * rank
        widths[axis] = (0, 1)
        mean = np.pad(mean, widths, constant_values=value)
        var = np.pad(var, widths, constant_values=0.0)
        if src is not None:
            src_mean = np.pad(src_mean, widths, constant_values=value)
            src_var = np.pad(src_var, widths, constant_values=0.0)
    source = None if src is None else Source(src_mean, src_var, src.chain)
    return attach(Moments(mean, var, source), maps, sp.corr)


def window(in_map: np.ndarray, out_size: int, kernel: int, stride: int, dilation: int,
           begin: int, end: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Output classes along one axis of a window op. Output index q reads input indices
    ``q*stride - begin + t*dilation`` (t < kernel); its signature is the input class under
    each tap (-1 in the padding, -2 beyond the end pad ``end`` when given: a ceil_mode window),
    and outputs with equal signatures form one class.

    Returns (out_map [out_size], taps [R, kernel]: each output class's input classes, negative
    in the padding; read-only, shared between calls with equal arguments)."""
    return _window(_key(in_map), int(out_size), int(kernel), int(stride), int(dilation),
                   int(begin), None if end is None else int(end))


@functools.lru_cache(maxsize=256)
def _window(map_key: tuple, out_size: int, kernel: int, stride: int, dilation: int, begin: int,
            end: int | None) -> tuple[np.ndarray, np.ndarray]:
    in_map = _array(map_key)
    size = in_map.size
    pos = np.arange(out_size)[:, None] * stride - begin + np.arange(kernel)[None, :] * dilation
    inside = (pos >= 0) & (pos < size)
    sig = np.where(inside, in_map[np.clip(pos, 0, size - 1)], -1)
    if end is not None:
        sig = np.where(pos >= size + end, -2, sig)
    taps, out_map = np.unique(sig, axis=0, return_inverse=True)
    out_map = out_map.reshape(-1)
    out_map.flags.writeable = taps.flags.writeable = False
    return out_map, taps


def joint(maps_list: Sequence[Sequence[np.ndarray]], sizes: Sequence[int]):
    """Classes of several operands over the same positions (a residual Add, a Concat): per axis
    the distinct tuples of the operands' classes. A map of length 1 broadcasts (a ``[N, C, 1, 1]``
    operand). Returns (maps, selections): ``selections[j][i]`` gives operand j's class of each
    joint class along axis i (read-only, shared between calls on equal maps: a deep stack's
    residual sums meet the same few maps)."""
    maps, selections = _joint(tuple(tuple(_key(m) for m in maps) for maps in maps_list),
                              tuple(int(n) for n in sizes))
    return maps, [list(s) for s in selections]


@functools.lru_cache(maxsize=256)
def _joint(keys: tuple, sizes: tuple) -> tuple[tuple, tuple]:
    maps, selections = [], [[] for _ in keys]
    for i, size in enumerate(sizes):
        columns = []
        for operand in keys:
            a = _array(operand[i])
            columns.append(np.zeros(size, dtype=np.int64) if a.size == 1 else a)
        stacked = np.stack(columns, axis=1)
        unique, inverse = np.unique(stacked, axis=0, return_inverse=True)
        maps.append(inverse.reshape(-1))
        for j in range(len(keys)):
            selections[j].append(unique[:, j])
    for a in maps + [a for s in selections for a in s]:
        a.flags.writeable = False
    return tuple(maps), tuple(tuple(s) for s in selections)


def _in_order(selection: np.ndarray, size: int) -> bool:
    """Whether ``selection`` takes each of ``size`` classes once, in order (0, 1, ...)."""
    return len(selection) == size and bool(np.array_equal(selection, np.arange(size)))


def take_cells(cells: Moments, selection: Sequence[np.ndarray]) -> Moments:
    """``cells`` re-indexed along each class axis by ``selection`` (source and mixture too)."""
    rank = cells.mean.ndim
    n = len(selection)

    def take(a, lead=0):
        a = np.asarray(a)
        a = a.reshape((1,) * (rank + lead - a.ndim) + a.shape)
        for i, sel in enumerate(selection):
            axis = lead + rank - n + i
            # size 1: the same for every class (broadcast); every class in order (operands
            # with the same classes): a itself, not a copy (a residual sum's mixtures)
            if a.shape[axis] > 1 and not _in_order(sel, a.shape[axis]):
                a = np.take(a, sel, axis=axis)
        return a

    src = cells.source
    if src is not None:
        src = Source(take(src.mean), take(src.var), src.chain)
    mixture = None
    if cells.mixture is not None:
        mixture = tuple(take(a, 1) for a in cells.mixture)
    return Moments(take(cells.mean), take(cells.var), src, mixture)


def select(x: Moments, axis: int, indices: np.ndarray) -> Moments:
    """``x`` (with ``spatial``) restricted to ``indices`` along ``axis`` (Slice, Split): the
    channels' cells along axis 1, the positions' classes along a spatial axis; the batch axis
    changes nothing."""
    sp = x.spatial
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if axis == 0:
        return x
    cells, maps = sp.cells, list(sp.maps)
    if axis == 1:
        if np.broadcast_shapes(cells.mean.shape, cells.var.shape)[1] > 1:
            sel = [np.arange(k) for k in sp.classes]
            cells = take_cells(_channels(cells, indices), sel)
        return attach(cells, maps)
    used, new_map = np.unique(maps[axis - 2][indices], return_inverse=True)
    maps[axis - 2] = new_map.reshape(-1)
    sel = [np.arange(k) for k in sp.classes]
    sel[axis - 2] = used
    return attach(take_cells(cells, sel), maps, cropped(sp.corr, axis - 2, indices))


def _channels(cells: Moments, indices: np.ndarray) -> Moments:
    def take(a, lead=0):
        a = np.asarray(a)
        axis = lead + 1
        if a.ndim > axis and a.shape[axis] > 1:
            return np.take(a, indices, axis=axis)
        return a

    src = cells.source
    if src is not None:
        src = Source(take(src.mean), take(src.var), src.chain)
    mixture = None if cells.mixture is None else tuple(take(a, 1) for a in cells.mixture)
    return Moments(take(cells.mean), take(cells.var), src, mixture)


def drop(x: Moments) -> Moments:
    """``x`` without position classes: its per-channel totals (for a rule that moves positions
    in a way it does not model)."""
    if x.spatial is None:
        return x
    return Moments(x.mean, x.var, x.source, x.mixture)


__all__ = ["DENSE_CAP", "attach", "class_weights", "dense", "drop", "gather_taps", "joint",
           "positions", "select", "take_cells", "window", "with_corr", "within_variance"]
