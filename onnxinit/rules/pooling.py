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

import itertools

import numpy as np

from .. import correlation, special
from ..moments import Moments, Source
from ..spatial import attach, class_weights, gather_taps, positions, window
from .context import RuleContext, RuleError, signal
from .elementwise import base_source
from .gaussian import compose, expand
from .pool_skewness import pooled_correction
from .rectified import MAX_COMPONENTS, merge
from .sample_energy import pooled_shared
from .maxima import (max_moments, max_of_correlated_gaussians, max_of_gaussians,
                     max_of_mixtures, non_decreasing, shared_max_covariance)
from .registry import rule

# ---------------------------------------------------------------------------------------------
# window geometry


def _pads(ctx: RuleContext, in_sizes, out_sizes, kernel, strides, dilations):
    """(begin, end) pads per spatial axis, auto_pad resolved from the static shapes."""
    n = len(kernel)
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        pads = list(ctx.attr("pads", [0] * 2 * n))
        return pads[:n], pads[n:]
    if auto_pad == "VALID":
        return [0] * n, [0] * n
    begins, ends = [], []
    for i in range(n):
        extent = (kernel[i] - 1) * dilations[i] + 1
        total = max(0, (out_sizes[i] - 1) * strides[i] + extent - in_sizes[i])
        begin = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
        begins.append(begin)
        ends.append(total - begin)
    return begins, ends


def _windows(ctx: RuleContext) -> list[tuple[int, int, float]]:
    """Distinct windows over output positions: (taps inside the input, taps inside the padded
    input, fraction of positions)."""
    x_shape, y_shape = ctx.in_shape(0), ctx.out_shape(0)
    kernel = list(ctx.attr("kernel_shape"))
    n = len(kernel)
    strides = list(ctx.attr("strides", [1] * n))
    dilations = list(ctx.attr("dilations", [1] * n))
    begins, ends = _pads(ctx, x_shape[2:], y_shape[2:], kernel, strides, dilations)
    per_axis = []
    for d in range(n):
        pos = (
            np.arange(y_shape[2 + d])[:, None] * strides[d]
            - begins[d]
            + np.arange(kernel[d])[None, :] * dilations[d]
        )
        # ceil_mode: a window starting in the end padding is dropped (onnxruntime, PyTorch);
        # onnx shape inference may still count it
        pos = pos[pos[:, 0] < x_shape[2 + d]] if ctx.attr("ceil_mode", 0) else pos
        inside = ((pos >= 0) & (pos < x_shape[2 + d])).sum(axis=1)
        padded = ((pos >= -begins[d]) & (pos < x_shape[2 + d] + ends[d])).sum(axis=1)
        pairs, counts = np.unique(np.stack([inside, padded], axis=1), axis=0, return_counts=True)
        per_axis.append([(int(a), int(b), c / len(inside)) for (a, b), c in zip(pairs, counts)])
    windows: dict[tuple[int, int], float] = {}
    for combo in itertools.product(*per_axis):
        inside = int(np.prod([c[0] for c in combo]))
        padded = int(np.prod([c[1] for c in combo]))
        weight = float(np.prod([c[2] for c in combo]))
        windows[(inside, padded)] = windows.get((inside, padded), 0.0) + weight
    return [(a, b, w) for (a, b), w in windows.items()]


def _class_windows(ctx: RuleContext, maps):
    """Output position classes of a pooling window over input classes ``maps``: per axis
    (out_map, taps [R, k]) with taps -1 in the pads and -2 beyond them (ceil_mode)."""
    x_shape, y_shape = ctx.in_shape(0), ctx.out_shape(0)
    kernel = list(ctx.attr("kernel_shape"))
    n = len(kernel)
    strides = list(ctx.attr("strides", [1] * n))
    dilations = list(ctx.attr("dilations", [1] * n))
    begins, ends = _pads(ctx, x_shape[2:], y_shape[2:], kernel, strides, dilations)
    out_maps, taps = [], []
    for d in range(n):
        size = y_shape[2 + d]
        if ctx.attr("ceil_mode", 0):  # a window starting in the end padding is dropped
            size = int(np.sum(np.arange(size) * strides[d] - begins[d] < x_shape[2 + d]))
        m, t = window(maps[d], size, kernel[d], strides[d], dilations[d], begins[d], ends[d])
        out_maps.append(m)
        taps.append(t)
    return out_maps, taps


def _tap_counts(taps, lowest: int) -> np.ndarray:
    """Per output cell, the number of taps with class >= ``lowest`` (0: inside the input, -1:
    inside the padded input): a product over the axes ``[R_0, ..., R_{n-1}]``."""
    out = np.ones(())
    for t in taps:
        out = np.multiply.outer(out, (t >= lowest).sum(axis=1).astype(np.float64))
    return out


def _cell_arrays(sp, c: int) -> tuple[np.ndarray, np.ndarray]:
    mu, nu = np.broadcast_arrays(sp.cells.mean, sp.cells.var)
    shape = (c,) + tuple(sp.classes)
    return np.broadcast_to(mu[0], shape), np.broadcast_to(nu[0], shape)


def _mix(parts: list[tuple[np.ndarray, np.ndarray, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel moments over positions of kinds r (mean_r, var_r, weight_r):
    mean = sum w mean_r, var = sum w var_r + sum w (mean_r - mean)^2."""
    mean = sum(w * m for m, _, w in parts)
    var = sum(w * v for _, v, w in parts) + sum(w * (m - mean) ** 2 for m, _, w in parts)
    return mean, var


def _spatially_uniform(x: Moments) -> bool:
    return all(a == 1 for a in x.tracked_axes()) or x.is_scalar


def per_channel(x: Moments, x_shape) -> Moments:
    """x with statistics that vary along spatial axes (a padded Conv's per-position output)
    pooled per channel: the moments by the law of total variance, and the source's Gaussian
    likewise (its element-wise chain kept), so that maxima sample one distribution per
    channel, as when the statistics were per channel from the start."""
    if _spatially_uniform(x):
        return x
    rank, c = len(x_shape), x_shape[1]
    m, v = x.values_along(1, c)
    src = x.source
    if src is not None and max(np.ndim(src.mean), np.ndim(src.var)) <= rank:
        pooled_src = Moments.along(
            *Moments(src.mean, src.var).expand_rank(rank).values_along(1, c), 1, rank)
        src = Source(pooled_src.mean, pooled_src.var, src.chain)
    else:
        src = None
    pooled = Moments.along(m, v, 1, rank)
    return Moments(pooled.mean, pooled.var, src)


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
    out_maps, taps = _class_windows(ctx, sp.maps)
    geometry = _geometry(ctx)
    inside = _tap_counts(taps, 0)
    if np.any(inside == 0):
        raise RuleError("a window entirely in the padding")
    divisor = _tap_counts(taps, -1) if ctx.attr("count_include_pad", 0) else inside
    mu, nu = _cell_arrays(sp, x_shape[1])
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


def _geometry(ctx: RuleContext):
    kernel = list(ctx.attr("kernel_shape"))
    n = len(kernel)
    return kernel, list(ctx.attr("strides", [1] * n)), list(ctx.attr("dilations", [1] * n))


@rule("GlobalAveragePool")
def global_average_pool(inputs, ctx: RuleContext):
    """Mean over the K spatial positions, per channel: E = mean_p mu, Var = mean_p nu / K
    (independent positions: a lower bound when neighbours are correlated), plus the
    non-Gaussian energy correlation of a depthwise Conv's outputs (:mod:`.pool_skewness`)."""
    x = signal(inputs, 0)
    x_shape = ctx.in_shape(0)
    out = spatial_mean(x, x_shape)
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


def spatial_mean(x: Moments, x_shape) -> Moments:
    """The mean over every spatial position, per channel: E = sum_k w_k mu_k, Var =
    sum_k w_k nu_k / K over the position classes k (w_k their share of the K positions:
    the spread of the position means is not noise, it averages out), times
    (1/K) sum_{p,p'} rho(p - p') when the positions are correlated (``onnxinit.correlation``)."""
    sp = positions(x, x_shape)
    k = int(np.prod(x_shape[2:]))
    mu, nu = _cell_arrays(sp, np.broadcast_shapes(x.mean.shape, x.var.shape)[1]
                          if x.rank == len(x_shape) else 1)
    w = class_weights(sp.maps)[None]
    axes = tuple(range(1, mu.ndim))
    mean = (w * mu).sum(axis=axes)
    var = (w * nu).sum(axis=axes) / k
    if sp.corr is not None:  # correlated positions: (nu/K^2) sum_d n(d) rho(d)
        var = var * correlation.mean_variance_factor(sp.corr, x_shape[2:])
        # BatchNorm's batch mean: the centred part's variance over N samples is (N-1)/N
        var = var * (1.0 - sp.corr.batch_centred(var.size) / max(1, x_shape[0]))
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
    classes = _max_pool_classes(x, x_shape, ctx)
    if classes is not None:
        return [classes] + outs
    x = per_channel(x, x_shape)
    rank = len(x_shape)
    windows = _windows(ctx)
    if any(inside == 0 for inside, _, _ in windows):
        raise RuleError("a window entirely in the padding")
    counts = sorted({inside for inside, _, _ in windows})
    stats = dict(zip(counts, max_moments(base_source(x, rank), counts, rank)))
    parts = [(*stats[inside], w) for inside, _, w in windows]
    mean, var = _mix(parts)
    return [Moments(mean, var)] + outs


def _max_pool_classes(x: Moments, x_shape, ctx: RuleContext) -> Moments | None:
    """MaxPool per output position class, when the input is a Gaussian per cell followed by a
    non-decreasing chain f (ReLU ...): max_taps f(z_t) = f(max_taps z_t) with z_t ~ N(m_t, s_t^2)
    the Gaussians of the cells under the taps (``maxima.max_of_gaussians``), correlated as the
    input's correlation says (a conv output's neighbours): each channel's taps at one common
    correlation r (``maxima.max_of_correlated_gaussians``, exact when the pairs are equally
    correlated), chosen so that the window's mean pair distance matches,
    ``sqrt(1 - r) = mean_pairs sqrt(1 - rho_ij)`` (E|z_i - z_j| sets the spread of a maximum;
    a 2x2 window's diagonal pair is less correlated than its sides). Positions are taken as
    stationary: the interior's correlation at the border too.
    None when the chain is not monotone."""
    sp = positions(x, x_shape)
    cells = sp.cells
    rank = len(x_shape)
    if cells.source is None and cells.mixture is not None and cells.mixture[1].ndim == rank + 1:
        return _max_pool_mixture(sp, x_shape, ctx)
    src = cells.source if cells.source is not None else Source(cells.mean, cells.var)
    mean, var = np.broadcast_arrays(expand(src.mean, rank), expand(src.var, rank))
    c = np.broadcast_shapes(mean.shape, cells.mean.shape)[1]
    shape = (c,) + tuple(sp.classes)
    mean, var = np.broadcast_to(mean[0], shape), np.broadcast_to(var[0], shape)
    if mean.shape[1:] != tuple(sp.classes) or not non_decreasing(src.chain, mean, var):
        return None
    out_maps, taps = _class_windows(ctx, sp.maps)
    n = len(taps)
    m_t = gather_taps(mean, taps)  # [C, T_0.., R_0..]
    s_t = gather_taps(np.sqrt(var), taps)
    valid = gather_taps(np.ones(shape), taps)
    t_shape = m_t.shape[1:1 + n]
    r_shape = m_t.shape[1 + n:]

    def lay_out(a):  # [T, 1, C, R_0, ...] so that per-channel constants of f broadcast
        a = np.moveaxis(a.reshape((c, int(np.prod(t_shape))) + r_shape), 1, 0)
        return a[:, None]

    if sp.corr is None:
        e, v, _ = max_of_gaussians(lay_out(m_t), lay_out(s_t), lay_out(valid),
                                   compose(src.chain))
        return attach(Moments(e, v), out_maps, None)
    common = _common_correlation(sp, ctx, c)
    e, v, slope = max_of_correlated_gaussians(
        lay_out(m_t), lay_out(s_t), lay_out(valid), compose(src.chain),
        common.reshape((1, c) + (1,) * len(r_shape)))
    lin, centre = _window_correlation(sp, ctx)
    z = _Z.reshape((-1, 1, 1) + (1,) * len(r_shape))
    nu = var.reshape(c, -1).mean(axis=1)
    m = mean.reshape(c, -1).mean(axis=1).reshape((1, c) + (1,) * len(r_shape))
    with np.errstate(all="ignore"):
        atoms = compose(src.chain)(m + np.sqrt(nu.reshape(m.shape)) * z)
    atoms = np.broadcast_to(atoms, (z.shape[0], 1, c) + atoms.shape[3:]).reshape(z.shape[0], c, -1)
    extra = _overlap_correlation(ctx, lin, atoms[:, :, 0], _P[:, None], nu, _Z)
    return attach(Moments(e, v), out_maps,
                  _max_correlation(lin, centre, var, slope, v, sp.corr.centred, extra))


def _common_correlation(sp, ctx: RuleContext, c: int) -> np.ndarray:
    """Per channel, the one correlation r of a window's taps with their mean pair distance,
    ``sqrt(1 - r) = mean_pairs sqrt(1 - rho_ij)`` (E|z_i - z_j| sets the spread of a maximum)."""
    if sp.corr is None:
        return np.zeros(c)
    kernel, _, dilations = _geometry(ctx)
    pairs = correlation.window_pairs(correlation.Correlation(*sp.corr.gaussian()), kernel,
                                     dilations)
    if not pairs.shape[1]:
        return np.zeros(c)
    distance = np.sqrt(np.clip(1.0 - pairs, 0.0, 2.0)).mean(axis=1)
    return np.broadcast_to(1.0 - distance**2, (c,))


def _max_pool_mixture(sp, x_shape, ctx: RuleContext) -> Moments:
    """MaxPool per output position class of an input described per cell as a Gaussian mixture
    (a ReLU of a residual sum): the maximum of the taps' mixtures joined by a Gaussian copula
    at the window's common correlation (``maxima.max_of_mixtures``); the output's correlation
    by :func:`_max_correlation` with the identity's slope 1."""
    w, m, v = (np.asarray(a, np.float64) for a in sp.cells.mixture)
    c = np.broadcast_shapes(m.shape, sp.cells.mean.shape)[2]
    shape = (w.shape[0], c) + tuple(sp.classes)
    w, m, v = (np.broadcast_to(a[:, 0], shape) for a in (w, m, v))
    out_maps, taps = _class_windows(ctx, sp.maps)
    n = len(taps)
    w_t, m_t, s_t = (gather_taps(a, taps) for a in (w, m, np.sqrt(v)))  # [K, C, T.., R..]
    valid = gather_taps(np.ones(shape[1:]), taps)
    t_shape, r_shape = m_t.shape[2:2 + n], m_t.shape[2 + n:]

    def lay_out(a):  # [(K,) T, C, R_0, ...]
        lead = a.shape[:a.ndim - 1 - 2 * n]
        a = a.reshape(lead + (c, int(np.prod(t_shape))) + r_shape)
        return np.moveaxis(a, len(lead) + 1, len(lead))

    common = _common_correlation(sp, ctx, c).reshape((c,) + (1,) * len(r_shape))
    e, var = max_of_mixtures(lay_out(w_t), lay_out(m_t), lay_out(s_t), lay_out(valid), common)
    e, var = e[None], var[None]
    if sp.corr is None:
        return attach(Moments(e, var), out_maps, None)
    lin, centre = _window_correlation(sp, ctx)
    cell_var = np.broadcast_to(np.broadcast_arrays(sp.cells.mean, sp.cells.var)[1][0],
                               shape[1:])
    # the taps' law pooled over the classes per channel (merged to MAX_COMPONENTS), on a grid
    classes = int(np.prod(sp.classes))
    wc, mc, vc = merge(*(np.moveaxis(a.reshape(a.shape[0], c, -1), 2, 1).reshape(-1, c)
                         for a in (w / classes, m, v)), MAX_COMPONENTS)
    sc = np.sqrt(vc)
    lo, hi = (mc - 8 * sc).min(axis=0), (mc + 8 * sc).max(axis=0)
    x = lo + (hi - lo) * np.linspace(0.0, 1.0, _Z.size)[:, None]  # [G, C]
    with np.errstate(divide="ignore", invalid="ignore"):
        cdf = (wc * np.where(sc > 0, special.ndtr((x[:, None] - mc) / np.where(sc > 0, sc, 1.0)),
                             x[:, None] >= mc)).sum(axis=1)
    cdf = cdf / np.maximum(cdf[-1:], 1e-300)
    probs = np.diff(cdf, axis=0, prepend=0.0)
    extra = _overlap_correlation(ctx, lin, x, probs, cell_var.reshape(c, -1).mean(axis=1), x)
    return attach(Moments(e, var), out_maps,
                  _max_correlation(lin, centre, cell_var, np.ones_like(var), var,
                                   sp.corr.centred, extra))


def _window_correlation(sp, ctx: RuleContext):
    """The window average of the Gaussian under the input's chain: (its output Correlation,
    ``(1/n^2) sum_{t,t'} rho_z(t' - t)`` per channel)."""
    kernel, strides, dilations = _geometry(ctx)
    rho_z, floor_z = sp.corr.gaussian()
    gauss = correlation.Correlation(rho_z, floor_z, None, sp.corr.centred)
    return correlation.window_sum(gauss, kernel, strides, dilations, ctx.out_shape(0)[2:])


# the Gaussian of a max pool's taps as atoms, for the windows' shared maximum
_Z = np.linspace(-8.0, 8.0, 801)
_P = np.diff(special.ndtr(np.concatenate([[-np.inf], 0.5 * (_Z[1:] + _Z[:-1]), [np.inf]])))


def _overlap_correlation(ctx: RuleContext, lin, atoms, probs, nu, z) -> np.ndarray:
    """Per channel and output offset, the correlation that windows sharing taps add beyond
    :func:`_max_correlation`'s linearisation: the exact covariance of the maxima of two
    windows of n independent taps, s of them shared (``maxima.shared_max_covariance``, the
    taps' law as ``atoms`` ``[G, C]`` of ``probs`` at the Gaussian values ``z``), less its
    linear part ``s nu (E f'(M) / n)^2``, over the maximum's variance. 0 where no tap is
    shared."""
    kernel, strides, dilations = _geometry(ctx)
    n = int(np.prod(kernel))
    radius = lin.radius
    offsets = list(itertools.product(*(range(-r, r + 1) for r in radius)))
    counts = []
    for d in offsets:
        shared = 1
        for k, st, dil, di in zip(kernel, strides, dilations, d):
            step = abs(di) * st
            shared *= max(0, k - step // dil) if step % dil == 0 else 0
        counts.append(shared if any(d) else 0)
    c = atoms.shape[1]
    extra = np.zeros((c, len(offsets)))
    wanted = sorted({s for s in counts if 0 < s < n})
    if wanted:
        e, var, covs = shared_max_covariance(atoms, np.broadcast_to(probs, atoms.shape), n, wanted)
        with np.errstate(all="ignore"):
            slope = np.gradient(atoms, axis=0) / np.gradient(np.broadcast_to(
                z.reshape(z.shape[0], -1), atoms.shape), axis=0)
        cdf = np.cumsum(np.broadcast_to(probs, atoms.shape), axis=0)
        law = cdf**n - np.concatenate([np.zeros_like(cdf[:1]), cdf[:-1]]) ** n
        k = (law * np.where(np.isfinite(slope), slope, 0.0)).sum(axis=0)
        safe = np.where(var > 0, var, 1.0)
        for j, s in enumerate(counts):
            if s in wanted:
                cov = covs[wanted.index(s)]
                extra[:, j] = np.where(var > 0, (cov - s * nu * (k / n) ** 2) / safe, 0.0)
    return extra.reshape((c,) + tuple(2 * r + 1 for r in radius))


def _max_correlation(lin, centre, var_z, slope, var_max, centred, extra=0.0):
    """Output correlation of a max pool by Stein's lemma, linearised: with pi_t = E[f'(M)]/n
    the chance-weighted derivative of the window's maximum by tap t,
    ``Cov(out(p), out(p+d)) ~ E[f'(M)]^2 nu_z (1/n^2) sum_{t,t'} rho_z(s d + t' - t)``
    (z the Gaussian under the chain; ``lin``, ``centre`` from :func:`_window_correlation`),
    divided by the maximum's variance; per channel, averaged over the position classes."""
    c = var_z.shape[0]
    axes = tuple(range(1, var_z.ndim))
    nu_z = var_z.mean(axis=axes)
    k = slope.reshape(c, -1).mean(axis=1)
    v = var_max.reshape(c, -1).mean(axis=1)
    scale = k**2 * nu_z * np.broadcast_to(centre, (c,)) / np.where(v > 0, v, 1.0)
    n = lin.rho.ndim - 1
    rho = np.broadcast_to(lin.rho, (c,) + lin.rho.shape[1:]) * scale.reshape((-1,) + (1,) * n)
    rho = rho + extra
    rho[(slice(None), *lin.radius)] = 1.0
    floor = np.broadcast_to(lin.floor, (c,)) * scale
    return correlation.Correlation(np.clip(rho, -1, 1), np.clip(floor, -1, 1), None, centred)


@rule("GlobalMaxPool")
def global_max_pool(inputs, ctx: RuleContext):
    """Max over the K spatial positions, per channel, from the order statistics of the input's
    distribution (its source when it has one)."""
    x_shape = ctx.in_shape(0)
    x = per_channel(signal(inputs, 0), x_shape)
    rank = len(x_shape)
    k = int(np.prod(x_shape[2:]))
    ((mean, var),) = max_moments(base_source(x, rank), [k], rank)
    return [Moments(mean, var)]


__all__ = ["max_moments", "spatial_mean"]
