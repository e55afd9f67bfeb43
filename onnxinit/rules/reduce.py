"""Reductions: ReduceMean, ReduceSum, ReduceSumSquare, ReduceL1, ReduceL2, ReduceLogSumExp,
ReduceMax, ReduceMin.

Sums and means assume independent elements (``Var = nu / K`` for a mean of K), except a mean
or sum over every spatial position of a tensor with position classes, which is the global
average pool's (``pooling.spatial_mean``: the cells weighted by their positions, and the
positions' correlation). Maxima use the order statistics of the input's distribution
(:mod:`.maxima`).
"""

from __future__ import annotations

import numpy as np
from .. import special

from ..moments import Moments
from .context import RuleContext, RuleError, signal
from .elementwise import base_source
from .global_maxima import class_maximum
from .map_means import map_mean_variance
from .group_statistics import group_statistic_variance
from .gaussian import COMPOSITE_W, COMPOSITE_Z, compose, expand
from .maxima import max_moments
from .pooling import gaussian_spatial_mean, pooled_extra
from .position_means import position_mean_moments
from .additive_scores import key_field
from .correlated_means import field_sum_factor
from .reduce_axes import reduced_axes
from .max_shifted import shifted_exp_sum
from .channel_classes import channel_classes
from .registry import rule
from .normalised_square_sum import normalised_square_sum
from .quadratic_form_law import drawn_square_sum
from .sample_variance import sample_variance
from .square_sum_field import square_sum_factors
from .table_rows import squared_input, table_mean_square
from .zero_streams import mean_square_component, mixed


def _layout(x: Moments, rank: int) -> tuple[np.ndarray, np.ndarray]:
    mu, nu = expand(x.mean, rank), expand(x.var, rank)
    shape = np.broadcast_shapes(mu.shape, nu.shape)
    return np.broadcast_to(mu, shape), np.broadcast_to(nu, shape)


def _finish(mean, var, axes, keepdims: bool) -> Moments:
    if not keepdims:
        mean, var = np.squeeze(mean, axis=axes), np.squeeze(var, axis=axes)
    return Moments(mean, var)


def _element_cumulants(x: Moments, rank: int, kind: str):
    """Per-element first three cumulants of g = x^2, |x| or exp(x) (x over its source when it
    has one), by quadrature on the composite rule, laid out at ``rank``; the square of a
    Gaussian in closed form (``mu^2 + s^2``, ``2 s^4 + 4 mu^2 s^2``, ``8 s^6 + 24 mu^2 s^4``)."""
    src = base_source(x, rank)
    mean, var = expand(src.mean, rank), expand(src.var, rank)
    if kind == "square" and not src.chain:  # a Gaussian's square: its cumulants in closed form
        m2 = mean**2
        return m2 + var, 2 * var**2 + 4 * m2 * var, 8 * var**3 + 24 * m2 * var**2
    shape = np.broadcast_shapes(mean.shape, var.shape)
    z = COMPOSITE_Z.reshape((-1,) + (1,) * len(shape))
    w = COMPOSITE_W.reshape(z.shape)
    g = {"square": np.square, "abs": np.abs, "exp": np.exp}[kind]
    with np.errstate(all="ignore"):
        values = g(np.asarray(compose(src.chain)(mean + np.sqrt(var) * z), dtype=np.float64))
    if not np.all(np.isfinite(values)):
        raise RuleError("the input distribution is not finite")
    k1 = (w * values).sum(axis=0)
    centred = values - k1
    return k1, (w * centred**2).sum(axis=0), (w * centred**3).sum(axis=0)


_U = (np.arange(4096) + 0.5) / 4096  # quantile midpoints


_DIRECT_ROWS = 64  # distinct rows up to which each gets its own gamma quantiles
_LATTICE = 64  # lattice points of log10(shape) per decade for many rows
_STANDARDISED: dict[int, np.ndarray] = {}  # lattice point -> (Q(k, _U) - k) / sqrt(k)


def _lattice_quantiles(point: int) -> np.ndarray:
    if point not in _STANDARDISED:
        k = 10.0 ** (point / _LATTICE)
        _STANDARDISED[point] = (special.gammaincinv(k, _U) - k) / np.sqrt(k)
    return _STANDARDISED[point]


def _gamma_quantiles(shape: np.ndarray) -> np.ndarray:
    """Q(shape, _U) [len(_U), rows] for many rows (a padded window's heads and tokens): the
    standardised quantiles ``(Q - k) / sqrt(k)`` computed once per lattice point of
    ``log10 k`` (``_LATTICE`` per decade, kept for the process) and interpolated linearly
    between the two around each shape, for k >= 1 (smooth in log k there: within 1e-4 of
    the quantile's scale ``sqrt(k)``); a smaller k gets its own."""
    position = np.log10(shape) * _LATTICE
    low = np.floor(position).astype(np.int64)
    frac = position - low
    out = np.empty((_U.size, shape.size))
    direct = shape < 1  # strongly skewed: each its own
    if direct.any():
        out[:, direct] = special.gammaincinv(shape[direct], _U[:, None])
    for point in np.unique(low[~direct]):
        rows = (low == point) & ~direct
        a, b = _lattice_quantiles(int(point)), _lattice_quantiles(int(point) + 1)
        t = a[:, None] + (b - a)[:, None] * frac[rows][None, :]
        out[:, rows] = shape[rows] + np.sqrt(shape[rows]) * t
    return out


def _pearson(k1, k2, k3, g):
    """(E[g(S)], Var[g(S)]) for S matched on three cumulants to a shifted gamma
    c + theta Gamma(k) (Pearson's approximation; a Gaussian when the skewness vanishes)."""
    k1, k2, k3 = np.broadcast_arrays(k1, k2, k3)
    if k1.size > 1:  # each distinct row once (the zero rows of a padded window are one)
        stacked = np.stack([np.ravel(k1), np.ravel(k2), np.ravel(k3)], axis=1)
        unique, inverse = np.unique(stacked, axis=0, return_inverse=True)
        if len(unique) < len(stacked):
            e, var = _pearson(unique[:, 0], unique[:, 1], unique[:, 2], g)
            inverse = np.ravel(inverse)
            return e[inverse].reshape(k1.shape), var[inverse].reshape(k1.shape)
    with np.errstate(all="ignore"):
        skewed = k3 > 1e-12 * np.maximum(k2, 1e-300) ** 1.5
        theta = np.where(skewed, k3 / (2 * k2), 0.0)
        shape = np.where(skewed, k2 / np.where(skewed, theta, 1.0) ** 2, 1.0)
        shape = np.minimum(shape, 1e8)
        u = _U.reshape((-1,) + (1,) * k1.ndim)
        if k1.ndim == 1 and k1.size > _DIRECT_ROWS:
            gamma_q = _gamma_quantiles(shape)
        else:
            gamma_q = special.gammaincinv(shape, u)
        normal_q = special.ndtri(u)
        q = np.where(
            skewed,
            k1 - shape * theta + theta * gamma_q,
            k1 + np.sqrt(k2) * normal_q,
        )
        values = g(np.maximum(q, 1e-300))
    e = values.mean(axis=0)
    return e, ((values - e) ** 2).mean(axis=0)


@rule("ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSumExp")
def reduce_linear(inputs, ctx: RuleContext):
    """Over the K reduced elements (independent), with per-index statistics averaged over the
    reduced axes (kept axes keep their per-channel statistics):

        ReduceMean       E = mu,       Var = nu / K       (lower bound if correlated)
        ReduceSum        E = K mu,     Var = K nu
        ReduceSumSquare  E = K E[x^2], Var = K Var[x^2]   (x^2 over the input's source)
        ReduceL1         E = K E|x|,   Var = K Var|x|
        ReduceL2         sqrt(S), S = sum x^2
        ReduceLogSumExp  log(S), S = sum exp(x)

    For the last two, S's first three cumulants (K times those of x^2 or exp(x), over the
    input's source) are matched to a shifted gamma ``c + theta Gamma(k)`` (Pearson's
    approximation, exact for the chi distribution of zero-mean Gaussians) and sqrt / log
    integrated over its quantiles (about 1% off for ReduceL2 of non-central terms at K = 8).
    ReduceLogSumExp samples the input's distribution (seeded) when K x tracked size is small
    (the gamma match is 2-4% off for a sum of a few lognormals), the gamma match otherwise.

    A mean of squares of rows that are zero for a share p of the tokens (an embedding table's
    padding row carried on: :mod:`.zero_rows`) is mixed with its point mass at 0, ``(1 - p)
    law + p delta_0``; of a residual stream that lacks such a row for them, with the other
    terms' mean square (:mod:`.zero_streams`).
    """
    if (row := shifted_exp_sum(ctx)) is not None:  # sum exp(x - max(x)): drawn rows
        return [row]
    outputs = _reduced(inputs, ctx)
    outputs[0] = drawn_square_sum(ctx, outputs[0])  # over correlated channels: their draws
    outputs[0] = sample_variance(ctx, outputs[0])  # over independent values: closed form
    found = mean_square_component(ctx, ctx.node.output[0])
    if found is None and ctx.node.op_type == "ReduceSum":  # additive attention's scores
        scored = key_field(ctx, outputs[0])
        return outputs if scored is None else [scored] + outputs[1:]
    return outputs if found is None else [mixed(outputs[0], *found)]


def _reduced(inputs, ctx: RuleContext):
    x = signal(inputs, 0)
    x_shape = ctx.in_shape(0)
    rank = len(x_shape)
    axes = reduced_axes(ctx, rank)
    if axes is None:
        return [x]
    keepdims = bool(ctx.attr("keepdims", 1))
    k = int(np.prod([x_shape[a] for a in axes]))
    op = ctx.node.op_type
    law = normalised_square_sum(ctx, axes, rank, keepdims)
    if law is not None:  # a dense layer's squares over a LayerNorm's rows: a ratio's law
        if op != "ReduceL2":
            return [law]
        k1, k2 = law.mean, law.var  # sqrt over a gamma of its mean and variance
        e, var = _pearson(k1, k2, 2 * k2 * k2 / np.maximum(k1, 1e-300), np.sqrt)
        return [Moments(e, var)]
    if op in ("ReduceMean", "ReduceSum") and x.spatial is not None and set(axes) == set(
            range(2, rank)):  # over every position of a map: position classes, correlation
        m = gaussian_spatial_mean(ctx, x, x_shape)
        extra = pooled_extra(ctx, x, x_shape)
        var = m.var if extra is None else m.var + extra.reshape(m.var.shape)
        k2 = k if op == "ReduceSum" else 1
        return [_finish(m.mean * k2, var * k2 * k2, axes, keepdims)]
    if op in ("ReduceMean", "ReduceSum"):
        rows = table_mean_square(ctx, tuple(sorted(axes)), rank)
        if rows is not None:  # the mean square of embedding rows: the table's law
            return [rows]
        per_channel = position_mean_moments(ctx, axes)
        if per_channel is not None:  # a Conv map's positions, each channel: its correlation
            m, v, _ = per_channel
            scale = 1 if op == "ReduceMean" else k
            return [_finish(m * scale, v * scale * scale, axes, keepdims)]
        mu, nu = _layout(x, rank)
        m = mu.mean(axis=axes, keepdims=True)
        v = nu.mean(axis=axes, keepdims=True)
        mean_var = map_mean_variance(ctx, axes)
        if mean_var is not None:  # a Conv map's channels and positions: their covariances
            v = np.full_like(v, mean_var * k)
        group = group_statistic_variance(ctx, axes) if mean_var is None else None
        if group is not None:  # over a group of a Conv map's channels (GroupNorm written out)
            v = np.broadcast_to(group, np.broadcast_shapes(v.shape, group.shape)) * k
            mean_var = group
        factor = field_sum_factor(ctx, axes) if mean_var is None else None
        if factor is not None:  # correlated channels (features): their covariances' sum
            v = v * factor
        squares = squared_input(ctx.graph, ctx.node.input[0]) is not None
        if mean_var is None and (by_class := channel_classes(x, x_shape, axes, keepdims, factor,
                                                             k, op, squares)) is not None:
            return [by_class]  # over a map's channels: per position class
        if op == "ReduceMean":
            return [_finish(m, v / k, axes, keepdims)]
        return [_finish(k * m, k * v, axes, keepdims)]
    if op == "ReduceLogSumExp":
        return [logsumexp_moments(x, x_shape, axes, keepdims, ctx)]
    kind = {"ReduceSumSquare": "square", "ReduceL2": "square", "ReduceL1": "abs"}.get(op, "exp")
    cumulants = [expand(c, rank) for c in _element_cumulants(x, rank, kind)]
    # cumulants of a sum of independent terms add
    k1, k2, k3 = (k * c.mean(axis=axes, keepdims=True) for c in cumulants)
    factors = square_sum_factors(ctx, x, x_shape, axes) if kind == "square" else None
    if factors is not None:  # correlated features: their squares move together
        k2, k3 = k2 * factors[0], k3 * factors[1]
    if op in ("ReduceSumSquare", "ReduceL1"):
        return [_finish(k1, k2, axes, keepdims)]
    e, var = _pearson(k1, k2, k3, np.sqrt if op == "ReduceL2" else np.log)
    return [_finish(e, var, axes, keepdims)]


def logsumexp_moments(x: Moments, x_shape, axes: tuple[int, ...], keepdims: bool,
                      ctx: RuleContext) -> Moments:
    """ReduceLogSumExp of x over ``axes``, ``log(S)``, ``S = sum_k exp(x_k)`` (K independent
    terms): sampled when K x tracked size is small and x does not vary along the axes, else
    S's three cumulants (K times exp(x)'s) matched to a shifted gamma and log integrated."""
    rank = len(x_shape)
    k = int(np.prod([x_shape[a] for a in axes]))
    if not any(a in axes for a in x.tracked_axes()):
        sampled = _sampled_logsumexp(x, rank, k, ctx)
        if sampled is not None:
            return _finish(*sampled, axes, keepdims)
    cumulants = [expand(c, rank) for c in _element_cumulants(x, rank, "exp")]
    k1, k2, k3 = (k * c.mean(axis=axes, keepdims=True) for c in cumulants)
    return _finish(*_pearson(k1, k2, k3, np.log), axes, keepdims)


def row_energy(x: Moments, rank: int, d: int, keepdims: bool, op: str, squared: float,
               excess: float) -> Moments | None:
    """ReduceSumSquare / ReduceL2 over the last axis alone of rows whose d features are
    correlated (:mod:`.feature_pairs`: ``squared`` the mean squared correlation of two features,
    ``excess`` the row energy's excess over a Gaussian's: a LayerNorm output's sum of squares
    is constant). ``S = sum_f x_f^2`` has, per row::

        Var S = 2 tr C^2 + excess (tr C)^2 + 4 sum_f mu_f^2 nu_f
              = sum_f (2 nu_f^2 + 4 mu_f^2 nu_f) + 2 squared ((sum_f nu_f)^2 - sum_f nu_f^2)
                + excess (sum_f nu_f)^2

    (the means' term on the diagonal: the correlations' signs are random against the means);
    its mean as for independent features, its third cumulant the independent one scaled to
    keep its skewness, then ``sqrt`` over the shifted gamma (``reduce_linear``). None when the
    variance comes out negative (a rank the pairs do not describe)."""
    axes = (rank - 1,)
    if d <= 1:
        return None
    along = (lambda c: c.sum(axis=-1, keepdims=True) if c.shape[-1] == d
             else d * c.mean(axis=-1, keepdims=True))
    k1, k2, k3 = (along(expand(c, rank)) for c in _element_cumulants(x, rank, "square"))
    _, nu = _layout(x, rank)
    tr, tr2 = along(nu), along(nu**2)
    cross = 2 * squared * (tr**2 - tr2) + excess * tr**2
    var = k2 + cross
    if np.any(var < -1e-9 * np.maximum(k2, 1e-300)):
        return None
    var = np.maximum(var, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        k3 = np.where(k2 > 0, k3 * (var / np.where(k2 > 0, k2, 1.0)) ** 1.5, 0.0)
    if op == "ReduceSumSquare":
        return _finish(k1, var, axes, keepdims)
    e, v = _pearson(k1, var, k3, np.sqrt)
    return _finish(e, v, axes, keepdims)


def _sampled_logsumexp(x: Moments, rank: int, k: int, ctx: RuleContext):
    """Monte Carlo log(sum of K exp(x)) for small K x tracked size (the shifted-gamma match is
    2-4% off there); None when the sample would be too large."""
    src = base_source(x, rank)
    mean, var = expand(src.mean, rank), expand(src.var, rank)
    shape = np.broadcast_shapes(mean.shape, var.shape)
    m = min(100_000, (1 << 23) // max(1, k * int(np.prod(shape))))
    if m < 20_000:
        return None
    with np.errstate(all="ignore"):
        values = src.sample(ctx.rng(), (m, k, *shape)) if shape else src.sample(ctx.rng(), (m, k))
        y = special.logsumexp(values, axis=1)
    if not np.all(np.isfinite(y)):
        raise RuleError("the input distribution is not finite")
    return expand(y.mean(axis=0), rank), expand(y.var(axis=0), rank)


# ---------------------------------------------------------------------------------------------
# maxima

@rule("ReduceMax", "ReduceMin")
def reduce_max(inputs, ctx: RuleContext):
    """Max (min) over the K reduced elements: over exactly the spatial axes of a map whose
    positions fall in classes, per class (:func:`.global_maxima.class_maximum`); otherwise
    from the order statistics of the input's distribution, per kept index; refused (measured instead) when the statistics vary along a
    reduced axis (the reduced values are then not identically distributed)."""
    x = signal(inputs, 0)
    x_shape = ctx.in_shape(0)
    rank = len(x_shape)
    axes = reduced_axes(ctx, rank)
    if axes is None:
        return [x]
    keepdims = bool(ctx.attr("keepdims", 1))
    minimum = ctx.node.op_type == "ReduceMin"
    if tuple(sorted(axes)) == tuple(range(2, rank)):  # every spatial axis: per position class
        found = class_maximum(x, x_shape, minimum)
        if found is not None:
            return [_finish(found.mean, found.var, axes, keepdims)]
    if any(a in axes for a in x.tracked_axes()):
        raise RuleError("statistics vary along a reduced axis")
    k = int(np.prod([x_shape[a] for a in axes]))
    src = base_source(x, rank)
    ((mean, var),) = max_moments(src, [k], rank, minimum=minimum)
    mean, var = expand(mean, rank), expand(var, rank)
    return [_finish(mean, var, axes, keepdims)]


__all__ = ["logsumexp_moments", "reduce_linear", "reduce_max", "reduced_axes"]
