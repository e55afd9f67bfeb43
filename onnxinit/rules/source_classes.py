"""A chain's source Gaussian per position class, for the chain's growth of the energy a sample
shares (:func:`.energy_fields.chain_law`, :func:`.chain_response.energy_response`).

A zero-padded convolution gives the border classes other means (``Spatial.cells``). What a
sample's energy scales is the part of a channel that moves with the sample, the variance within
a class; the class means are what every sample shares. Pooling the classes into one Gaussian
per channel (law of total variance) scales the pattern of the class means with the sample's
energy too, and a chain whose classes sit far apart reads that pattern as energy: Keras'
``Rescaling(1/127.5, offset=-1)`` before MobileNetV3Small's stem (tf2onnx, 96x96) puts the
last row and column of the strided stem 20-200 within-class standard deviations from the
interior on the N(0, 1) input, and the predicted eta went 0.0004 -> 0.007 -> 0.1 -> 0.6 -> ...
-> 23 where onnxruntime measures 0.0000-0.02; the chains' offsets (alpha) reached 59 standard
deviations and their variances 29x. Here each class keeps its own Gaussian ``N(m_k, s_k^2)``
and its share ``w_k`` of the positions: at a sample's scale ``1 + eps`` and mean offset ``a
eps`` the class is ``N(m_k + a eps, (1 + eps) s_k^2)``, the energy taken about each class's
own mean.

The classes are binned per channel by their mean, in bins :data:`WIDTH` within-class standard
deviations wide with the interior class (the heaviest) at the centre of its bin; each bin is
one Gaussian (law of total variance). Within a bin the pattern moves with the sample, as the
pooled Gaussian had it. That is what torchvision's nets and a border pattern on a small map
measure: their patterns (within 1.5 standard deviations of the interior in MobileNetV3-small
at 224, its up to 196 cells) come from the zero padding of per-sample means that do move,
EfficientNet-B0's measured eta is 1.1x the eta about each position's mean, and bins 1 wide
took EfficientNet-B0 at 64 from 95.6% to 94.3% within 10% and the pool of
tests/rules/test_border_pattern_pool.py (6x6, its classes 2-4 standard deviations apart) from
0.98x to 0.92x of onnxruntime's (4 wide: 0.93x). Not modelled: which part of a class pattern
moves with the sample (the padding of a per-sample mean offset, class by class: carried from
each conv's taps, it changed nothing measurable).
"""

from __future__ import annotations

import weakref

import numpy as np

from ..moments import Moments
from ..spatial import class_weights

WIDTH = 8.0  # within-class standard deviations (module docstring)


def per_object(cache: dict, obj, key, compute):
    """``compute()`` kept per live ``obj`` and ``key``: ``cache`` maps ``id(obj)`` to (a weak
    reference confirming the same object, key, value); cleared beyond 4096 entries."""
    hit = cache.get(id(obj))
    if hit is not None and hit[0]() is obj and hit[1] == key:
        return hit[2]
    if len(cache) > 4096:
        cache.clear()
    out = compute()
    cache[id(obj)] = (weakref.ref(obj), key, out)
    return out


_CLASSES: dict[int, tuple] = {}  # id(Moments) -> (weakref, (rank, C), classes)


def source_classes(m: Moments, shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(means ``[B, C]``, variances ``[B, C]``, weights ``[B, C]``) of m's source Gaussian per
    position class, binned per channel (:func:`merged`), one class (the pooled source) where m
    has no position classes or its cells' source is not m's chain; read-only, kept per m."""
    rank, c = len(shape), int(shape[1])
    return per_object(_CLASSES, m, (rank, c), lambda: _read_only(_classes(m, rank, c)))


def pooled_source(m: Moments, rank: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, var) ``[C]`` of m's source Gaussian, its classes pooled (total variance)."""
    src = m.source
    return tuple(np.broadcast_to(a, (c,)) for a in
                 Moments(src.mean, src.var).expand_rank(rank).values_along(1, c))


def _read_only(arrays):
    for a in arrays:
        a.flags.writeable = False
    return arrays


def _classes(m: Moments, rank: int, c: int):
    found = _cell_sources(m, rank, c)
    if found is not None:
        mean, var, weights, _ = merged(*found)
        if weights.shape[0] > 1:
            return mean, var, weights
    mean, var = pooled_source(m, rank, c)  # one class after all: the pooled source itself
    return mean[None].copy(), var[None].copy(), np.ones((1, c))


def _cell_sources(m: Moments, rank: int, c: int):
    """(means, variances ``[K, C]``, weights ``[K]``) of m's cells' sources, or None."""
    sp, src = m.spatial, m.source
    if sp is None or src is None or len(sp.maps) != rank - 2:
        return None
    cell = sp.cells.source
    if cell is None or tuple(f.key for f in cell.chain) != tuple(f.key for f in src.chain):
        return None
    classes = sp.classes
    full = (1, c, *classes)
    try:
        mean, var = (np.broadcast_to(np.reshape(a, (1,) * (rank - np.ndim(a)) + np.shape(a)),
                                     full) for a in (cell.mean, cell.var))
    except ValueError:
        return None
    weights = np.asarray(class_weights(sp.maps), np.float64).reshape(-1)
    return (mean.reshape(c, -1).T, var.reshape(c, -1).T, weights)


def merged(mean: np.ndarray, var: np.ndarray, weights: np.ndarray):
    """The classes (rows of ``mean``, ``var`` ``[K, C]``, ``weights`` [K]) binned per channel
    by their mean, in bins :data:`WIDTH` wide in units of the channel's standard deviation
    within the classes, each bin one Gaussian (law of total variance): (means, variances,
    weights ``[B, C]``, each class's bin ``[K, C]``); a channel with fewer than B bins has
    bins of weight 0 (the channel's moments, which weigh nothing)."""
    if weights.size == 0 or not np.all(weights > 0):
        raise ValueError("a position class without positions")
    w = weights[:, None]
    centre = (w * mean).sum(axis=0)
    within = (w * var).sum(axis=0)
    sd = np.sqrt(np.where(within > 0, within, 1.0))
    heaviest = mean[int(np.argmax(weights))]  # the interior: its bin centred on it
    bins = np.floor((mean - heaviest) / (WIDTH * sd) + 0.5)
    index = bin_index(np.where(np.isfinite(bins), bins, 0.0))
    count = int(index.max()) + 1
    member = index[None] == np.arange(count)[:, None, None]  # [B, K, C]
    out_w = np.einsum("k,bkc->bc", weights, member)
    safe = np.where(out_w > 0, out_w, 1.0)
    out_m = np.where(out_w > 0, np.einsum("k,bkc,kc->bc", weights, member, mean) / safe, centre)
    spread = var[None] + (mean[None] - out_m[:, None]) ** 2  # [B, K, C]
    out_v = np.where(out_w > 0, np.einsum("k,bkc,bkc->bc", weights, member, spread) / safe,
                     within)
    return out_m, out_v, out_w, index


def bin_index(bins: np.ndarray) -> np.ndarray:
    """Each entry's rank among the distinct values of its column, ``[K, C]`` int64, of whole
    numbers ``bins`` ``[K, C]``: a table of the values present where a column spans fewer than
    :data:`_SPAN` values (a few passes over the entries), else a stable sort per column."""
    low = bins.min(axis=0)
    span = float((bins.max(axis=0) - low).max()) if bins.size else 0.0
    if span < _SPAN:
        shifted = (bins - low).astype(np.int64)
        cols = np.arange(bins.shape[1])
        present = np.zeros((int(span) + 1, bins.shape[1]), bool)
        present[shifted, cols] = True
        return (np.cumsum(present, axis=0, dtype=np.int64) - 1)[shifted, cols]
    order = np.argsort(bins, axis=0, kind="stable")
    sorted_bins = np.take_along_axis(bins, order, axis=0)
    new = np.concatenate([np.ones((1, bins.shape[1]), bool),
                          np.diff(sorted_bins, axis=0) != 0])
    index = np.empty(bins.shape, np.int64)
    np.put_along_axis(index, order, np.cumsum(new, axis=0) - 1, axis=0)
    return index


_SPAN = 64  # bins a column may span for bin_index's table


__all__ = ["WIDTH", "bin_index", "merged", "per_object", "pooled_source", "source_classes"]
