"""Pooling: AveragePool, GlobalAveragePool, MaxPool, GlobalMaxPool (reductions: reduce.py).

Per output position class (``onnxinit.spatial``), with the neighbours' correlation
(``onnxinit.correlation``) where the input carries it; independent elements otherwise
(``Var = nu / K`` for a mean of K: a lower bound when neighbours are correlated). Window sizes are exact per output position: zero padding counted or not
(``count_include_pad``), partial windows at the border and from ``ceil_mode``, strides and
dilations; the per-channel statistics average over positions with the law of total variance.

Maxima use the order statistics of the input's real distribution rather than Monte Carlo
(:mod:`.maxima`): per position class the maximum of the cells' Gaussians under a non-decreasing
chain (ReLU ...); otherwise, per channel, the input's source (a Gaussian followed by its
element-wise chain, e.g. a ReLU) is discretised on 3072 quantile-spaced atoms (composite
Gauss-Legendre in the Gaussian variable), and the maximum of K independent draws of that discrete
distribution has exactly ``P(max = v_(i)) = F_i^K - F_(i-1)^K``. This is deterministic, vectorised
per channel, cheap for any K (GlobalMaxPool over 3136 values costs the same as K = 4), and agrees
with Monte Carlo to well under 1%. Sampling a Gaussian with the post-ReLU moments instead (what
AutoInit does) under-predicts E[x^2] after max-pooling by about 1.3x. Results are cached by
(K, moments, chain keys).
"""

from __future__ import annotations

import numpy as np

from .. import correlation
from ..moments import Moments
from ..spatial import attach, class_weights, gather_taps, positions
from .batch_mean import pooled_centring
from .context import RuleContext, RuleError, signal
from .elementwise import base_source
from .energy_mixture import mixture_shift
from .gated_max import gate_operands, gated
from .global_maxima import class_maximum
from .max_windows import max_pool_classes
from .maxima import max_moments
from .pool_skewness import pooled_correction
from .pool_windows import (cell_arrays, class_windows, composed_max_pool, distinct_windows, mix,
                           per_channel, tap_counts, window_geometry)
from .registry import rule
from .shared_pool import pooled_shared

# ---------------------------------------------------------------------------------------------
# averages


@rule("AveragePool")
def average_pool(inputs, ctx: RuleContext):
    """Per output position class with n taps inside the input and d the divisor (n, or the
    taps inside the padded input when count_include_pad=1), for independent inputs:

        E(r) = sum_taps mu(class under tap) / d,   Var(r) = sum_taps nu(class under tap) / d^2

    (= mu, nu/K for an interior window of uniform input); per channel over positions: the law
    of total variance. With correlated neighbours (``onnxinit.correlation``) each channel's
    variances are multiplied by ``(1/n) sum_{t,t'} rho(t' - t)`` (an interior window's, the
    ratio of the correlated to the independent variance), and the output's correlation is
    ``sum_{t,t'} rho(s d + t' - t)`` normalised."""
    x = signal(inputs, 0)
    x_shape = ctx.in_shape(0)
    sp = positions(x, x_shape)
    out_maps, taps = class_windows(ctx, sp.maps)
    geometry = window_geometry(ctx)
    inside = tap_counts(taps, 0)
    if np.any(inside == 0):
        raise RuleError("a window entirely in the padding")
    divisor = tap_counts(taps, -1) if ctx.attr("count_include_pad", 0) else inside
    mu, nu = cell_arrays(sp, x_shape[1])
    n = len(taps)
    t_axes = tuple(range(1, 1 + n))
    mean = gather_taps(mu, taps).sum(axis=t_axes) / divisor
    var = gather_taps(nu, taps).sum(axis=t_axes) / divisor**2
    corr = None
    if sp.corr is not None:
        kernel, strides, dilations = geometry
        corr, centre = correlation.window_sum(sp.corr, kernel, strides, dilations,
                                              ctx.out_shape(0)[2:])
        var = var * (centre * int(np.prod(kernel))).reshape((-1,) + (1,) * n)
    return [attach(Moments(mean[None], var[None]), out_maps, corr)]


@rule("GlobalAveragePool")
def global_average_pool(inputs, ctx: RuleContext):
    """Mean over the K spatial positions, per channel: E = mean_p mu, Var = mean_p nu / K
    (independent positions: a lower bound when neighbours are correlated), plus the
    non-Gaussian energy correlation of a depthwise Conv's outputs (:mod:`.pool_skewness`)."""
    x = signal(inputs, 0)
    x_shape = ctx.in_shape(0)
    out = gaussian_spatial_mean(ctx, x, x_shape)
    extra = pooled_extra(ctx, x, x_shape)
    if extra is None:
        return [out]
    return [Moments(out.mean, out.var + extra.reshape(out.var.shape))]


def pooled_extra(ctx: RuleContext, x: Moments, x_shape) -> np.ndarray | None:
    """What a mean over every position of ``x`` (the node's input 0) adds per channel to
    :func:`spatial_mean`'s variance: the non-Gaussian terms of a depthwise conv's local energy
    (:mod:`.pool_skewness`) and the energy a sample's positions share (:mod:`.sample_energy`);
    None without either."""
    parts = [p for p in (pooled_correction(ctx, x, x_shape), pooled_shared(ctx, x, x_shape))
             if p is not None]
    return sum(parts) if parts else None


def gaussian_spatial_mean(ctx: RuleContext, x: Moments, x_shape) -> Moments:
    """:func:`spatial_mean` of ``x`` (the node's input 0) with the variance its chain has as a
    function of one Gaussian, where :mod:`.energy_mixture` integrated it over the shared
    energy: the pool's shared term (:func:`pooled_extra`) adds the samples' spread itself."""
    out = spatial_mean(x, x_shape)
    cells = x.spatial.cells if x.spatial is not None else x
    found = None
    if cells.source is not None and cells.source.chain and ctx.node.input:
        found = mixture_shift(ctx, ctx.node.input[0], cells)
    if found is None or found[1].size != np.size(out.var):
        return out
    return Moments(out.mean, out.var / found[1].reshape(np.shape(out.var)))


def spatial_mean(x: Moments, x_shape) -> Moments:
    """The mean over every spatial position, per channel: E = sum_k w_k mu_k, Var =
    sum_k w_k nu_k / K over the position classes k (w_k their share of the K positions:
    the spread of the position means is not noise, it averages out), times
    (1/K) sum_{p,p'} rho(p - p') when the positions are correlated (``onnxinit.correlation``)."""
    sp = positions(x, x_shape)
    k = int(np.prod(x_shape[2:]))
    mu, nu = cell_arrays(sp, np.broadcast_shapes(x.mean.shape, x.var.shape)[1]
                          if x.rank == len(x_shape) else 1)
    w = class_weights(sp.maps)[None]
    axes = tuple(range(1, mu.ndim))
    mean = (w * mu).sum(axis=axes)
    var = (w * nu).sum(axis=axes) / k
    if sp.corr is not None:  # correlated positions: (nu/K^2) sum_d n(d) rho(d)
        var = var * correlation.mean_variance_factor(sp.corr, x_shape[2:])
        # BatchNorm's batch mean: the centred part's variance over N samples is (N-1)/N of
        # what the pooled element variance gives (:mod:`.batch_mean`)
        var = var * pooled_centring(sp.corr, var.size, x_shape[2:], x_shape[0])
    return Moments.along(mean, var, 1, len(x_shape)) if mean.size > 1 else Moments(
        mean.reshape((1,) * len(x_shape)), var.reshape((1,) * len(x_shape)))


@rule("MaxPool")
def max_pool(inputs, ctx: RuleContext):
    """Per output position, the max of its K valid taps (padding is -inf: border and ceil_mode
    windows hold fewer): E_K, Var_K from the order statistics of the input's distribution
    (its source when it has one); per channel over positions: E = mean_p E_K(p),
    Var = mean_p Var_K(p) + var_p E_K(p). Statistics that vary with the position are pooled
    per channel first (:func:`per_channel`). Indices output: None."""
    x_shape = ctx.in_shape(0)
    x = signal(inputs, 0)
    outs = [None] * (len(ctx.node.output) - 1)
    composed = composed_max_pool(ctx)
    if composed is not None and composed.known is not None:
        base = composed.known.get(composed.node.input[0])
        classes = None if base is None else max_pool_classes(composed.cropped(base),
                                                             composed.in_shape(0), composed)
        if classes is not None:
            return [classes] + outs
    gate = gate_operands(ctx)
    if gate is not None:  # max(x s) = s max(x) for a gate s >= 0 equal over the window
        pooled = _max_pool_of(ctx.known[gate[0]], x_shape, ctx)
        return [gated(pooled, ctx.known[gate[1]], ctx.out_shape(0)[2:])] + outs
    return [_max_pool_of(x, x_shape, ctx)] + outs


def _max_pool_of(x: Moments, x_shape, ctx: RuleContext) -> Moments:
    """The MaxPool's output for input moments ``x``: per position class where the input is a
    monotone chain of Gaussians, else from the order statistics of its distribution."""
    classes = max_pool_classes(x, x_shape, ctx)
    if classes is not None:
        return classes
    x = per_channel(x, x_shape)
    rank = len(x_shape)
    windows = distinct_windows(ctx)
    if any(inside == 0 for inside, _, _ in windows):
        raise RuleError("a window entirely in the padding")
    counts = sorted({inside for inside, _, _ in windows})
    stats = dict(zip(counts, max_moments(base_source(x, rank), counts, rank)))
    parts = [(*stats[inside], w) for inside, _, w in windows]
    mean, var = mix(parts)
    return Moments(mean, var)


@rule("GlobalMaxPool")
def global_max_pool(inputs, ctx: RuleContext):
    """Max over the K spatial positions, per channel: per position class where the positions
    fall in classes (:func:`.global_maxima.class_maximum`), otherwise from the order statistics
    of the input's distribution (its source when it has one)."""
    x_shape = ctx.in_shape(0)
    x = signal(inputs, 0)
    found = class_maximum(x, x_shape)
    if found is not None:
        return [found]
    x = per_channel(x, x_shape)
    rank = len(x_shape)
    k = int(np.prod(x_shape[2:]))
    ((mean, var),) = max_moments(base_source(x, rank), [k], rank)
    return [Moments(mean, var)]


__all__ = ["spatial_mean"]
