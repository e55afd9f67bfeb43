"""The maximum (minimum) over every spatial position of a map whose positions fall in classes
(:mod:`onnxinit.spatial`: a padded Conv's border rows and columns have other means and
variances than its interior): GlobalMaxPool, and ReduceMax / ReduceMin over exactly the
spatial axes (torch's ``amax(dim=(2, 3))``, a text CNN's max over time).

With ``x = f(z)``, f non-decreasing (ReLU, BatchNorm's affine with a positive scale ...), the
positions independent and position p of class k drawn from ``z ~ N(m_k, s_k^2)``, the class
holding ``n_k`` of the K positions:

    max_p f(z_p) = f(max_p z_p),    P(max_p z_p <= t) = prod_k Phi((t - m_k) / s_k)^n_k

(:func:`.maxima.max_of_gaussians`, the classes as taps drawn ``n_k`` times). The minimum is
``-max_p(-f(z_p))``, ``-f(-t)`` non-decreasing in ``-z``. Correlated positions (a conv
output's neighbours, ``onnxinit.correlation``: rho(d) up to the field's radius, its floor
beyond) share one common factor r (:func:`.maxima.max_of_correlated_gaussians`), as a MaxPool
window's taps do (:mod:`.max_windows`), with the map's mean pair distance,

    sqrt(1 - r) = sum_{d != 0} n(d) sqrt(1 - rho(d)) / (K (K - 1)),   n(d) = prod_a (S_a - |d_a|)

(the pairs of positions at offset d on a map of sides S_a): on a large map r is the floor
(about 0), on a short sequence the neighbours' correlation.

Why: the old rule pooled the classes into one Gaussian per channel (the law of total variance)
and took the maximum of K draws of it. A mixture of Gaussians with spread means and variances
has a heavier upper tail than the Gaussian of its total variance, so the maximum's spread was
low. Measured (onnxruntime, 64 batches of 8, torch Conv -> BatchNorm(train) -> ReLU x3 on 16x16,
``amax(dim=(2, 3))``): the pooled channel Gaussian gives Var 0.155, each position's own
Gaussian 0.179, measured 0.242; the rest is each position's excess kurtosis (0.06-0.14: a
position sums inputs dependent across channels, ReLUs of one Conv's correlated channels), not
modelled. There the
positions' correlation hardly matters: the measured maximum of positions each drawn from another
sample (no correlation, no shared energy) is within 1% of the real one.
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments, Source
from ..spatial import class_weights, positions
from .gaussian import compose, expand
from .maxima import max_of_correlated_gaussians
from .monotone import non_decreasing


def common_correlation(corr, sizes, channels: int) -> np.ndarray:
    """Per channel, the one correlation r of all positions of a map of ``sizes`` with their
    mean pair distance (module docstring); 0 without a field."""
    if corr is None:
        return np.zeros(channels)
    rho, floor = (np.asarray(a, np.float64) for a in corr.gaussian())
    k = int(np.prod(sizes))
    if k < 2:
        return np.zeros(channels)
    radius = tuple((n - 1) // 2 for n in rho.shape[1:])
    counts = np.ones(())
    for r, s in zip(radius, sizes):
        d = np.arange(-r, r + 1)
        counts = np.multiply.outer(counts, np.maximum(s - np.abs(d), 0).astype(np.float64))
    floor = floor.reshape((-1,) + (1,) * len(sizes))
    far = np.sqrt(np.clip(1.0 - floor, 0.0, 2.0))
    near = np.sqrt(np.clip(1.0 - rho, 0.0, 2.0))  # 0 at offset 0 (rho = 1): the K self-pairs
    total = ((near - far) * counts).sum(axis=tuple(range(1, rho.ndim))) + k * k * far.reshape(-1)
    distance = total / (k * (k - 1))
    return np.broadcast_to(1.0 - distance**2, (channels,)).copy()


def class_maximum(x: Moments, x_shape, minimum: bool = False) -> Moments | None:
    """``[1, C, 1, ...]`` moments of the max (min) over every spatial position of ``x``
    (module docstring), or None where x has one class per axis, is described by a mixture per
    cell, or its chain is not non-decreasing (the caller's per-channel rule then applies)."""
    rank = len(x_shape)
    if rank < 3 or x.spatial is None:
        return None
    sp = positions(x, x_shape)
    cells = sp.cells
    classes = tuple(sp.classes)
    if int(np.prod(classes)) < 2 or (cells.source is None and cells.mixture is not None):
        return None
    src = cells.source if cells.source is not None else Source(cells.mean, cells.var)
    mean, var = np.broadcast_arrays(expand(src.mean, rank), expand(src.var, rank))
    if mean.shape[0] != 1 or len(mean.shape) != rank or any(
            n not in (1, k) for n, k in zip(mean.shape[2:], classes)):
        return None
    c = np.broadcast_shapes(mean.shape, cells.mean.shape)[1]
    shape = (c,) + classes
    mean, var = np.broadcast_to(mean[0], shape), np.broadcast_to(var[0], shape)
    if not non_decreasing(src.chain, mean, var):
        return None
    k = int(np.prod(x_shape[2:]))
    count = np.asarray(class_weights(sp.maps), np.float64) * k
    fn = compose(src.chain)

    def lay_out(a):  # [T, 1, C, 1, ...]: the classes as taps, f's per-channel constants broadcast
        a = np.moveaxis(np.asarray(a, np.float64).reshape(a.shape[0], -1), 1, 0)
        return a.reshape(a.shape[:2] + (1,) * (rank - 2))[:, None]

    taps_mean, taps_std = lay_out(mean), lay_out(np.sqrt(var))
    taps_count = lay_out(np.broadcast_to(np.rint(count), shape))
    rho = common_correlation(sp.corr, x_shape[2:], c).reshape((1, c) + (1,) * (rank - 2))
    if minimum:
        e, v, _ = max_of_correlated_gaussians(-taps_mean, taps_std, taps_count,
                                              lambda t: -fn(-t), rho)
        return Moments(-e, v)
    e, v, _ = max_of_correlated_gaussians(taps_mean, taps_std, taps_count, fn, rho)
    return Moments(e, v)


__all__ = ["class_maximum"]
