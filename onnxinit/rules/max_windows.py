"""MaxPool per output position class: the maxima of the cells' Gaussians under a non-decreasing
chain (:mod:`.maxima`), and the output's spatial correlation.

Two neighbouring MaxPool windows are correlated for two reasons, both modelled:

* the input's own correlation (a conv output's neighbours), linearised by Stein's lemma,
  ``Cov(max_A, max_B) ~ sum_{i in A, j in B} pi_i pi_j Cov_z(i, j)`` with ``pi_i = E[f'(M)]/n``;
* taps the two windows share (kernel 3, stride 2: a row or column of three), where both maxima
  are often the same element: the linear term counts that as ``s pi^2 Var(z)`` for s shared
  taps, a quarter to a third of the truth for a ReLU'd 3x3 window, so it is replaced by the
  exact covariance of two maxima over ``n`` taps sharing ``s``, given the window's common
  factor (``shared_taps.shared_taps_covariance``). This holds with independent inputs too, where the
  linear term is all there is of the overlap.

Not modelled: the window's taps are taken as equicorrelated (one common factor, as for the
maximum itself), the two windows as sharing that factor within the overlap term, and positions
as stationary (the interior's correlation at the border too).
"""

from __future__ import annotations

import numpy as np

from .. import correlation, special
from ..moments import Moments, Source
from ..spatial import attach, class_weights, gather_taps, positions
from .context import RuleContext
from .gaussian import compose, expand
from .maxima import max_of_correlated_gaussians
from .mixture_maxima import max_of_mixtures
from .shared_taps import shared_taps_covariance
from .monotone import non_decreasing
from .pool_windows import class_windows, window_geometry


def max_pool_classes(x: Moments, x_shape, ctx: RuleContext) -> Moments | None:
    """MaxPool per output position class, when the input is a Gaussian per cell followed by a
    non-decreasing chain f (ReLU ...): max_taps f(z_t) = f(max_taps z_t) with z_t ~ N(m_t, s_t^2)
    the Gaussians of the cells under the taps (``maxima.max_of_gaussians``), correlated as the
    input's correlation says (a conv output's neighbours): each channel's taps at one common
    correlation r (``maxima.max_of_correlated_gaussians``, exact when the pairs are equally
    correlated), chosen so that the window's mean pair distance matches,
    ``sqrt(1 - r) = mean_pairs sqrt(1 - rho_ij)`` (E|z_i - z_j| sets the spread of a maximum;
    a 2x2 window's diagonal pair is less correlated than its sides). Positions are taken as
    stationary: the interior's correlation at the border too.
    An input described per cell as a Gaussian mixture (a ReLU of a residual sum) takes the
    mixture path (:func:`_max_pool_mixture`). None when the chain is not monotone."""
    sp = positions(x, x_shape)
    cells = sp.cells
    rank = len(x_shape)
    if cells.source is None and cells.mixture is not None and cells.mixture[1].ndim <= rank + 1:
        return _max_pool_mixture(sp, x_shape, ctx)
    src = cells.source if cells.source is not None else Source(cells.mean, cells.var)
    mean, var = np.broadcast_arrays(expand(src.mean, rank), expand(src.var, rank))
    c = np.broadcast_shapes(mean.shape, cells.mean.shape)[1]
    shape = (c,) + tuple(sp.classes)
    mean, var = np.broadcast_to(mean[0], shape), np.broadcast_to(var[0], shape)
    if mean.shape[1:] != tuple(sp.classes) or not non_decreasing(src.chain, mean, var):
        return None
    out_maps, taps = class_windows(ctx, sp.maps)
    n = len(taps)
    m_t = gather_taps(mean, taps)  # [C, T_0.., R_0..]
    s_t = gather_taps(np.sqrt(var), taps)
    valid = gather_taps(np.ones(shape), taps)
    t_shape = m_t.shape[1:1 + n]
    r_shape = m_t.shape[1 + n:]

    def lay_out(a):  # [T, 1, C, R_0, ...] so that per-channel constants of f broadcast
        a = np.moveaxis(a.reshape((c, int(np.prod(t_shape))) + r_shape), 1, 0)
        return a[:, None]

    common = common_correlation(sp, ctx, c)
    e, v, slope = max_of_correlated_gaussians(
        lay_out(m_t), lay_out(s_t), lay_out(valid), compose(src.chain),
        common.reshape((1, c) + (1,) * len(r_shape)))
    corr = _max_correlation(sp, out_maps, ctx, mean, var, compose(src.chain), common, slope, v)
    return attach(Moments(e, v), out_maps, corr)


def common_correlation(sp, ctx: RuleContext, c: int) -> np.ndarray:
    """Per channel, the one correlation r of a window's taps with their mean pair distance,
    ``sqrt(1 - r) = mean_pairs sqrt(1 - rho_ij)`` (E|z_i - z_j| sets the spread of a maximum)."""
    if sp.corr is None:
        return np.zeros(c)
    kernel, _, dilations = window_geometry(ctx)
    pairs = correlation.window_pairs(correlation.Correlation(*sp.corr.gaussian()), kernel,
                                     dilations)
    if not pairs.shape[1]:
        return np.zeros(c)
    distance = np.sqrt(np.clip(1.0 - pairs, 0.0, 2.0)).mean(axis=1)
    return np.broadcast_to(1.0 - distance**2, (c,)).copy()


def _max_pool_mixture(sp, x_shape, ctx: RuleContext) -> Moments:
    """MaxPool per output position class of an input described per cell as a Gaussian mixture
    (a ReLU of a residual sum): the maximum of the taps' mixtures joined by a Gaussian copula
    at the window's common correlation (``mixture_maxima.max_of_mixtures``); the output's correlation
    by :func:`_max_correlation` in the copula's Gaussian units (the taps as the quantile
    function of their law of a standard normal, :func:`_quantile_function`)."""
    w, m, v = (np.asarray(a, np.float64) for a in sp.cells.mixture)
    rank = len(x_shape)  # a mixture shared by every channel has no channel axis: lift it
    w, m, v = (a.reshape(a.shape[:1] + (1,) * (rank + 1 - a.ndim) + a.shape[1:]) for a in (w, m, v))
    c = np.broadcast_shapes(m.shape, sp.cells.mean.shape)[2]
    shape = (w.shape[0], c) + tuple(sp.classes)
    w, m, v = (np.broadcast_to(a[:, 0], shape) for a in (w, m, v))
    out_maps, taps = class_windows(ctx, sp.maps)
    n = len(taps)
    w_t, m_t, s_t = (gather_taps(a, taps) for a in (w, m, np.sqrt(v)))  # [K, C, T.., R..]
    valid = gather_taps(np.ones(shape[1:]), taps)
    t_shape, r_shape = m_t.shape[2:2 + n], m_t.shape[2 + n:]

    def lay_out(a):  # [(K,) T, C, R_0, ...]
        lead = a.shape[:a.ndim - 1 - 2 * n]
        a = a.reshape(lead + (c, int(np.prod(t_shape))) + r_shape)
        return np.moveaxis(a, len(lead) + 1, len(lead))

    common = common_correlation(sp, ctx, c)
    e, var = max_of_mixtures(lay_out(w_t), lay_out(m_t), lay_out(s_t), lay_out(valid),
                             common.reshape((c,) + (1,) * len(r_shape)))
    e, var = e[None], var[None]
    # the output's correlation in the copula's Gaussian units: the taps as q(z), z standard
    # normal, q the quantile function of the channel's law pooled over its position classes
    quantile = _quantile_function(w, m, v, class_weights(sp.maps), rank)
    unit = np.zeros((1, 1, c) + (1,) * (rank - 2))  # one tap drawn n times, per channel
    taps_n = float(np.prod(window_geometry(ctx)[0]))
    slope = max_of_correlated_gaussians(unit, unit + 1.0, unit + taps_n, quantile,
                                        common.reshape(unit.shape[1:]))[2]
    corr = _max_correlation(sp, out_maps, ctx, np.zeros(shape[1:]), np.ones(shape[1:]), quantile,
                            common, np.broadcast_to(slope, var.shape), var)
    return attach(Moments(e, var), out_maps, corr)


_QUANTILE_GRID = 401


def _quantile_function(w, m, v, weights, rank):
    """z -> F_c^-1(Phi(z)) per channel c, F_c the law of the mixture (w, m, v) ``[K, C,
    *classes]`` pooled over the position classes (their shares ``weights``), tabulated on
    _QUANTILE_GRID points over +-8 standard deviations of every component; called on arrays
    laid out at the tensor's rank (the channel axis ``rank - 1`` from the end)."""
    k, c = w.shape[:2]
    w = (w * weights).reshape(k, c, -1).transpose(0, 2, 1).reshape(-1, c)
    m, s = (a.reshape(k, c, -1).transpose(0, 2, 1).reshape(-1, c) for a in (m, np.sqrt(v)))
    lo, hi = (m - 8 * s).min(axis=0), np.maximum((m + 8 * s).max(axis=0), (m - 8 * s).min(axis=0) + 1e-12)
    x = lo + (hi - lo) * np.linspace(0.0, 1.0, _QUANTILE_GRID)[:, None]  # [G, C]
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (x[:, None] - m) / np.where(s > 0, s, 1.0)
        cdf = (w * np.where(s > 0, special.ndtr(z), x[:, None] >= m)).sum(axis=1)
    cdf = np.maximum.accumulate(cdf / np.maximum(cdf[-1:], 1e-300), axis=0)

    def quantile(values):
        u = special.ndtr(np.asarray(values, np.float64))
        axis = u.ndim - (rank - 1)
        moved = np.moveaxis(u, axis, -1)
        out = np.empty(moved.shape)
        for j in range(moved.shape[-1]):
            col = j if c > 1 else 0
            out[..., j] = np.interp(moved[..., j], cdf[:, col], x[:, col])
        return np.moveaxis(out, -1, axis)

    return quantile


def _shared_taps(kernel, strides, dilations, radius) -> np.ndarray:
    """Per output offset d (``|d_i| <= radius_i``), the number of taps the windows at p and
    p + d share: per axis, ``k - |d s| / dil`` when ``d s`` is a multiple of ``dil``."""
    out = np.ones(())
    for k, s, dil, r in zip(kernel, strides, dilations, radius):
        shift = np.abs(np.arange(-r, r + 1)) * s
        count = np.where(shift % dil == 0, np.maximum(k - shift // dil, 0), 0)
        out = np.multiply.outer(out, count.astype(np.float64))
    return out


def _max_correlation(sp, out_maps, ctx: RuleContext, tap_mean, tap_var, fn, common, slope,
                     var_max):
    """The output's Correlation: Stein's linearisation over every pair of taps of the two
    windows, ``Cov_lin(d) = E[f'(M)]^2 nu_z (1/n^2) sum_{t,t'} rho_z(s d + t' - t)`` (z the
    Gaussian under the chain f), with the shared taps' share of it, ``E[f'(M)]^2 nu_z (1 - r)
    s(d) / n^2``, replaced by their exact covariance given the common factor r
    (``shared_taps.shared_taps_covariance``); divided by the maximum's variance, per channel,
    averaged over the position classes. None for independent inputs and windows that do not
    overlap (the output's positions are independent too)."""
    kernel, strides, dilations = window_geometry(ctx)
    c = tap_var.shape[0]
    out_sizes = ctx.out_shape(0)[2:]
    if sp.corr is not None:
        gauss = correlation.Correlation(*sp.corr.gaussian(), None, sp.corr.centred)
    else:
        gauss = correlation.independent(c, ctx.in_shape(0)[2:])
    lin, centre = correlation.window_sum(gauss, kernel, strides, dilations, out_sizes)
    shared = _shared_taps(kernel, strides, dilations, lin.radius)
    shared[lin.radius] = 0.0
    if sp.corr is None and not np.any(shared):
        return None
    w_in = class_weights(sp.maps).reshape(1, -1)
    w_out = class_weights(out_maps).reshape(1, -1)
    nu_z = (tap_var.reshape(c, -1) * w_in).sum(axis=1)
    mu_z = (tap_mean.reshape(c, -1) * w_in).sum(axis=1)
    k = (slope.reshape(c, -1) * w_out).sum(axis=1)
    v = (var_max.reshape(c, -1) * w_out).sum(axis=1)
    v = np.where(v > 0, v, 1.0)
    n_taps = int(np.prod(kernel))
    spatial = lin.rho.ndim - 1
    per_channel = (-1,) + (1,) * spatial
    cov = np.broadcast_to(lin.rho, (c,) + lin.rho.shape[1:]) * (
        k**2 * nu_z * np.broadcast_to(centre, (c,))).reshape(per_channel)
    counts = sorted({int(s) for s in np.unique(shared) if s > 0})
    if counts:
        rank = len(ctx.in_shape(0))
        lay = (1, c) + (1,) * (rank - 2)
        exact = shared_taps_covariance(
            mu_z.reshape(lay), np.sqrt(nu_z).reshape(lay), fn, n_taps,
            counts, common.reshape(lay)).reshape(len(counts), c)
        for count, covariance in zip(counts, exact):
            linear = k**2 * nu_z * (1.0 - common) * count / n_taps**2
            cov = np.where(shared == count, (cov + (covariance - linear).reshape(per_channel)),
                           cov)
    rho = cov / v.reshape(per_channel)
    rho[(slice(None), *lin.radius)] = 1.0
    floor = np.broadcast_to(lin.floor, (c,)) * k**2 * nu_z * np.broadcast_to(centre, (c,)) / v
    centred = sp.corr.centred if sp.corr is not None else None
    return correlation.Correlation(np.clip(rho, -1, 1), np.clip(floor, -1, 1), None, centred)
