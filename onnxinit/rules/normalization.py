"""Normalization layers: Batch-, Instance-, Group-, Layer-, RMS-, Lp- and MeanVariance-.

All standardise each sample over a set of normalised elements with their own (population)
mean and variance. With per-index input statistics ``mu_f``, ``nu_f`` over the ``n`` normalised
elements (``f`` runs over the tracked indices inside the normalised axes; the others are
uniform), the sample statistics concentrate at

    m = mean_f mu_f,   v = mean_f nu_f + mean_f (mu_f - m)^2     (law of total variance)

and each element becomes ``(x_f - m_hat) / sqrt(v_hat + eps)``. Hence, per normalised index::

    D     = mean_f (mu_f - m)^2 + nu_bar (n-1)/n + eps          (E[v_hat] + eps)
    E_f   = gamma_f (mu_f - m) / sqrt(D) + beta_f
    Var_f = gamma_f^2 (nu_f (1 - 2/n) + nu_bar/n) / D           (Var[x_f - m_hat] / D)

with ``nu_bar = mean_f nu_f``. When every index has the same statistics this is
``E = beta``, ``Var = gamma^2 nu/(nu + eps n/(n-1))``: the AutoInit rule ``E = beta``,
``Var = gamma^2``, times the exact effect of eps. When per-feature means differ (a LayerNorm after
a linear layer with bias), the output mean is not ``beta`` and the variance not ``gamma^2``; the
formula above follows them. It treats ``v_hat`` as its expectation, exact as n grows (error
O(1/n)); normalised groups of a few elements are approximate.

BatchNormalization always uses training semantics (batch statistics); its running-statistic
outputs (training mode) follow :mod:`.running_statistics`. When the input carries a source (an element-wise chain over a Gaussian) and the
groups are large (n >= 64), the output keeps it with the per-index affine map appended, so
MaxPool after BN(ReLU(x)) still samples the real distribution.
"""

from __future__ import annotations

import numpy as np

from ..moments import Elementwise, Moments, Source
from ..spatial import attach, within_variance
from .covariance_readers import layer_norm_factor
from .context import RuleContext, RuleError, signal
from .elementwise import affine, apply_fn, digest
from .gaussian import abs_closed, expand, gaussian_moments
from .mixture import affine_mixture
from .registry import rule
from .batch_mean import batch_mean_share
from .running_statistics import running_statistics

_MIN_FOR_SOURCE = 64


def _param(ctx: RuleContext, index: int, rank: int, default: float) -> np.ndarray:
    """A scale/bias constant left-padded to ``rank``; ``default`` when the input is absent."""
    if not ctx.has_input(index):
        return np.float64(default)
    value = ctx.const(index)
    if value is None:
        raise RuleError(f"input {index} (scale or bias) is not constant")
    value = np.asarray(value, dtype=np.float64)
    return value.reshape(()) if value.size == 1 else expand(value, rank)


def _along(value: np.ndarray, axis: int, rank: int) -> np.ndarray:
    """A 1-D parameter laid out along ``axis`` of a rank-``rank`` tensor."""
    value = np.asarray(value, dtype=np.float64).reshape(-1)
    if value.size == 1:
        return value.reshape(())
    shape = [1] * rank
    shape[axis] = value.size
    return value.reshape(shape)


def standardize(x: Moments, in_shape, axes) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(E, Var) of ``(x - m_hat)/sqrt(v_hat + eps)`` before eps, as (mu - m, Var[x - m_hat], D0,
    n) with ``D0 = E[v_hat]`` (add eps to it): see the module docstring."""
    rank = len(in_shape)
    axes = tuple(sorted(a % rank for a in axes))
    mu, nu = expand(x.mean, rank), expand(x.var, rank)
    shape = np.broadcast_shapes(mu.shape, nu.shape)
    mu, nu = np.broadcast_to(mu, shape), np.broadcast_to(nu, shape)
    n = int(np.prod([in_shape[a] for a in axes])) if axes else 1
    m = mu.mean(axis=axes, keepdims=True)
    spread = ((mu - m) ** 2).mean(axis=axes, keepdims=True)
    nu_bar = nu.mean(axis=axes, keepdims=True)
    d0 = spread + nu_bar * (n - 1) / n
    centred_var = nu * (1 - 2 / n) + nu_bar / n if n > 1 else np.zeros_like(nu)
    return mu - m, centred_var, d0, n


def _normalized(x: Moments, in_shape, axes, eps, gamma, beta) -> Moments:
    """gamma * standardised + beta, with the source kept (affine map appended) for large n."""
    rank = len(in_shape)
    centred, cvar, d0, n = standardize(x, in_shape, axes)
    denom = d0 + eps
    if np.any(denom <= 0):
        raise RuleError("a normalised group with zero variance and eps = 0")
    scale = gamma / np.sqrt(denom)
    mean = scale * centred + beta
    var = gamma**2 * cvar / denom
    if x.spatial is not None and _per_channel(rank, axes, gamma, beta):
        return _normalized_cells(x, in_shape, axes, eps, gamma, beta, n)
    source = None
    if x.source is not None and x.source.chain and n >= _MIN_FOR_SOURCE:
        src = x.source
        if max(np.ndim(src.mean), np.ndim(src.var)) <= rank:
            a = np.broadcast_to(scale, np.broadcast_shapes(np.shape(scale), np.shape(mean)))
            b = mean - a * (expand(x.mean, rank))
            f = Elementwise(("Affine", "norm", *digest(a), *digest(b)), lambda v: a * v + b)
            source = Source(src.mean, src.var, src.chain + (f,))
    mixture = None
    if n >= _MIN_FOR_SOURCE:  # a mixture (residual sum) mapped like the source
        mixture = affine_mixture(x, scale, mean - scale * expand(x.mean, rank), rank)
    return Moments(mean, var, source, mixture)


def _per_channel(rank: int, axes, gamma, beta) -> bool:
    """Whether a normalisation is per channel over every spatial position with a per-channel
    affine map (Batch-, Instance-, a LayerNorm over [H, W] with a scalar scale): what the
    position classes of ``_normalized_cells`` describe. A LayerNorm over [C, H, W] shares one
    statistic across channels, or scales each position its own way: the plain formula."""
    axes = {a % rank for a in axes}
    if 1 in axes or not set(range(2, rank)) <= axes:
        return False
    return all(np.ndim(p) <= 2 or all(s == 1 for s in np.shape(p)[2:]) for p in (gamma, beta))


def _normalized_cells(x: Moments, in_shape, axes, eps, gamma, beta, n: int) -> Moments:
    """The module formula per position class (``onnxinit.spatial``), per channel c over the
    normalised positions: D = nu_within (n-1)/n + spread + eps (the spread of the cells'
    means is signal, the within-cell variance is what the batch mean estimates with error),
    every cell k mapped by ``E_k = gamma (mu_k - m)/sqrt(D) + beta``,
    ``Var_k = gamma^2 (nu_k (1 - 2/n) + nu_within / n) / D``, with ``1/n`` the batch mean's
    share of the variance (:mod:`.batch_mean`: what correlated or already centred inputs give).
    After BatchNormalization each channel's sample means are centred over the batch."""
    rank = len(in_shape)
    sp = x.spatial
    c = in_shape[1]
    within = within_variance(sp, c).reshape((1, c) + (1,) * (rank - 2))
    mean_c = np.broadcast_to(x.mean, (1, c) + (1,) * (rank - 2))
    spread = np.maximum(np.broadcast_to(x.var, mean_c.shape) - within, 0.0)
    q = 1 / n if 0 not in axes else np.reshape(
        batch_mean_share(sp.corr, c, in_shape[2:], in_shape[0]), (1, -1) + (1,) * (rank - 2))
    denom = within * (1 - q) + spread + eps
    if np.any(denom <= 0):
        raise RuleError("a normalised group with zero variance and eps = 0")
    a = gamma / np.sqrt(denom)
    out = apply_fn(x, affine(a, beta - a * mean_c, ("norm",)), rank)
    cells = out.spatial.cells if out.spatial is not None else out
    var = cells.var * (1 - 2 * q) + a * a * within * q
    cells = Moments(cells.mean, var, cells.source, cells.mixture)
    corr = out.spatial.corr if out.spatial is not None else None
    if 0 in axes and corr is not None:  # batch statistics: sample means centred over the batch
        corr = corr.with_centred(np.ones(1), normalized=True)
    return attach(cells, sp.maps, corr)


def _rest(ctx: RuleContext, first: Moments) -> list:
    return [first] + [None] * (len(ctx.node.output) - 1)


@rule("BatchNormalization")
def batch_normalization(inputs, ctx: RuleContext):
    """Training semantics (batch statistics over N and the spatial axes), per channel c:

        E_c = beta_c,  Var_c = gamma_c^2 nu_c / (nu_c + eps n/(n-1)),  n = N x spatial

    (the module formula with the channel's statistics; tracked spatial means are pooled into
    the channel's). The running-mean/var outputs of training mode:
    :mod:`.running_statistics`."""
    x = signal(inputs, 0)
    in_shape = ctx.in_shape(0)
    rank = len(in_shape)
    if rank < 2:
        raise RuleError("BatchNormalization of a rank < 2 tensor")
    eps = float(ctx.attr("epsilon", 1e-5))
    gamma = _along(_param(ctx, 1, 1, 1.0), 1, rank)
    beta = _along(_param(ctx, 2, 1, 0.0), 1, rank)
    axes = [a for a in range(rank) if a != 1]
    out = _normalized(x, in_shape, axes, eps, gamma, beta)
    extra = len(ctx.node.output) - 1
    if extra == 2 and all(ctx.node.output[1:]):
        return [out, *running_statistics(x, in_shape, ctx)]
    return _rest(ctx, out)


@rule("InstanceNormalization")
def instance_normalization(inputs, ctx: RuleContext):
    """Per sample and channel over the spatial axes (n = spatial size), per channel c:
    E_c = beta_c + gamma_c (mu_c - m)/sqrt(D), Var_c = gamma_c^2 Var[x - m_hat]/D (module
    formula; with per-channel input statistics: E = beta, Var = gamma^2 nu/(nu + eps n/(n-1)))."""
    x = signal(inputs, 0)
    in_shape = ctx.in_shape(0)
    rank = len(in_shape)
    eps = float(ctx.attr("epsilon", 1e-5))
    gamma = _along(_param(ctx, 1, 1, 1.0), 1, rank)
    beta = _along(_param(ctx, 2, 1, 0.0), 1, rank)
    return _rest(ctx, _normalized(x, in_shape, range(2, rank), eps, gamma, beta))


@rule("GroupNormalization")
def group_normalization(inputs, ctx: RuleContext):
    """Per sample and group of C/G channels over channels-in-group x spatial (n elements):
    per channel c of group g, E_c = gamma (mu_c - m_g)/sqrt(D_g) + beta,
    Var_c = gamma^2 (nu_c (1-2/n) + nu_bar_g/n) / D_g, D_g = var_c(mu) + nu_bar_g (n-1)/n + eps.
    Scale and bias are per group at opset 18 (shape [G]) and per channel from opset 21."""
    x = signal(inputs, 0)
    in_shape = ctx.in_shape(0)
    rank = len(in_shape)
    if rank < 2:
        raise RuleError("GroupNormalization of a rank < 2 tensor")
    eps = float(ctx.attr("epsilon", 1e-5))
    groups = int(ctx.attr("num_groups"))
    c = in_shape[1]
    if groups <= 0 or c % groups:
        raise RuleError("channels not divisible by num_groups")
    spatial = int(np.prod(in_shape[2:])) if rank > 2 else 1
    gamma = np.asarray(_param(ctx, 1, 1, 1.0), dtype=np.float64).reshape(-1)
    beta = np.asarray(_param(ctx, 2, 1, 0.0), dtype=np.float64).reshape(-1)
    if ctx.opset < 21 and gamma.size == groups and groups != c:
        gamma, beta = np.repeat(gamma, c // groups), np.repeat(beta, c // groups)
    mu, nu = x.values_along(1, c)
    grouped = Moments(mu.reshape(1, groups, c // groups), nu.reshape(1, groups, c // groups))
    pseudo = Moments(grouped.mean, grouped.var)  # GroupNorm outputs are left Gaussian
    out = _normalized(
        pseudo,
        (1, groups, c // groups * spatial),
        [2],
        eps,
        np.broadcast_to(gamma, (c,)).reshape(1, groups, -1) if gamma.size > 1 else gamma,
        np.broadcast_to(beta, (c,)).reshape(1, groups, -1) if beta.size > 1 else beta,
    )
    mean, var = out.mean.reshape(-1), out.var.reshape(-1)
    mean = np.broadcast_to(mean, (c,)) if mean.size == 1 else mean
    var = np.broadcast_to(var, (c,)) if var.size == 1 else var
    return _rest(ctx, Moments.along(mean, var, 1, rank))


@rule("LayerNormalization")
def layer_normalization(inputs, ctx: RuleContext):
    """Per sample over the axes [axis, rank) (n elements), per normalised feature f:

        E_f   = gamma_f (mu_f - m)/sqrt(D) + beta_f
        Var_f = gamma_f^2 (nu_f (1-2/n) + nu_bar/n) / D,  D = var_f(mu) + nu_bar (n-1)/n + eps

    m, var_f(mu), nu_bar over the normalised features (law of total variance): with equal input
    statistics, E = beta and Var = gamma^2 nu/(nu + eps n/(n-1)). The Mean and InvStdDev
    outputs get None."""
    x = signal(inputs, 0)
    in_shape = ctx.in_shape(0)
    rank = len(in_shape)
    axis = int(ctx.attr("axis", -1)) % rank
    eps = float(ctx.attr("epsilon", 1e-5))
    gamma = _param(ctx, 1, rank, 1.0)
    beta = _param(ctx, 2, rank, 0.0)
    out = _normalized(x, in_shape, range(axis, rank), eps, gamma, beta)
    factor = layer_norm_factor(ctx, x, in_shape, eps) if axis == rank - 1 else None
    if factor is not None:  # correlated features (a patch embedding's): their centring
        out = Moments(out.mean, out.var * expand(factor.reshape((1,) * (rank - 1) + (-1,)),
                                                 rank))
    return _rest(ctx, out)


@rule("MeanVarianceNormalization")
def mean_variance_normalization(inputs, ctx: RuleContext):
    """(x - mean)/sqrt(var) over ``axes`` (default [0, 2, 3]), eps 1e-9 as in the function
    body: the module formula with gamma = 1, beta = 0 (E = 0, Var = 1 for uniform statistics)."""
    x = signal(inputs, 0)
    in_shape = ctx.in_shape(0)
    axes = list(ctx.attr("axes", [0, 2, 3]))
    if any(not -len(in_shape) <= a < len(in_shape) for a in axes):
        raise RuleError("axes out of range")
    return [_normalized(x, in_shape, axes, 1e-9, np.float64(1.0), np.float64(0.0))]


def _rms(x: Moments, in_shape, axes, eps, gamma, bias=None) -> Moments:
    """E_f = gamma_f mu_f / rms, Var_f = gamma_f^2 nu_f / rms^2,
    rms^2 = mean_f (nu_f + mu_f^2) + eps over the normalised axes."""
    rank = len(in_shape)
    axes = tuple(sorted(a % rank for a in axes))
    mu, nu = expand(x.mean, rank), expand(x.var, rank)
    shape = np.broadcast_shapes(mu.shape, nu.shape)
    mu, nu = np.broadcast_to(mu, shape), np.broadcast_to(nu, shape)
    ms = (nu + mu**2).mean(axis=axes, keepdims=True) + eps
    mean = gamma * mu / np.sqrt(ms)
    if bias is not None:
        mean = mean + bias
    return Moments(mean, gamma**2 * nu / ms)


@rule("RMSNormalization", since=23)
def rms_normalization(inputs, ctx: RuleContext):
    """x / sqrt(mean(x^2 over [axis, rank)) + eps) * scale, per normalised feature f:
    E_f = gamma_f mu_f / rms, Var_f = gamma_f^2 nu_f / rms^2, rms^2 = mean_f(nu_f + mu_f^2) + eps
    (the sample mean of squares treated as its expectation: exact as n grows)."""
    x = signal(inputs, 0)
    in_shape = ctx.in_shape(0)
    rank = len(in_shape)
    axis = int(ctx.attr("axis", -1)) % rank
    eps = float(ctx.attr("epsilon", 1e-5))
    return [_rms(x, in_shape, range(axis, rank), eps, _param(ctx, 1, rank, 1.0))]


@rule("SimplifiedLayerNormalization")
@rule("SimplifiedLayerNormalization", domain="com.microsoft")
def simplified_layer_normalization(inputs, ctx: RuleContext):
    """onnxruntime's RMS normalisation (a contrib op onnxruntime registers in the default
    domain, exporters also emit it in com.microsoft): the RMSNormalization rule."""
    x = signal(inputs, 0)
    in_shape = ctx.in_shape(0)
    rank = len(in_shape)
    axis = int(ctx.attr("axis", -1)) % rank
    eps = float(ctx.attr("epsilon", 1e-5))
    out = _rms(x, in_shape, range(axis, rank), eps, _param(ctx, 1, rank, 1.0))
    return _rest(ctx, out)


def _skip_sum(inputs, ctx: RuleContext, bias_index: int) -> Moments:
    """input + skip (+ bias): E = mu1 + mu2 + b, Var = nu1 + nu2 (independent operands)."""
    rank = len(ctx.in_shape(0))
    parts = []
    for index in (0, 1):
        m = inputs[index] if index < len(inputs) else None
        if m is None:
            value = ctx.const(index)
            if value is None:
                raise RuleError(f"input {index} is neither a signal nor constant")
            v = np.asarray(value, dtype=np.float64)
            parts.append((expand(v, rank), np.float64(0.0)))
        else:
            parts.append((expand(m.mean, rank), expand(m.var, rank)))
    mean = parts[0][0] + parts[1][0]
    if ctx.has_input(bias_index):
        mean = mean + _param(ctx, bias_index, rank, 0.0)
    return Moments(mean, parts[0][1] + parts[1][1])


@rule("SkipLayerNormalization", domain="com.microsoft")
def skip_layer_normalization(inputs, ctx: RuleContext):
    """LayerNormalization over the last axis of input + skip + bias (operands independent);
    the sum output (index 3) gets the sum's moments, mean / inv-std outputs None."""
    s = _skip_sum(inputs, ctx, 4)
    in_shape = ctx.in_shape(0)
    rank = len(in_shape)
    eps = float(ctx.attr("epsilon", 1e-12))
    out = _normalized(
        s, in_shape, [rank - 1], eps, _param(ctx, 2, rank, 1.0), _param(ctx, 3, rank, 0.0)
    )
    outs = _rest(ctx, out)
    if len(outs) > 3:
        outs[3] = s
    return outs


@rule("SkipSimplifiedLayerNormalization", domain="com.microsoft")
def skip_simplified_layer_normalization(inputs, ctx: RuleContext):
    """RMS normalisation over the last axis of input + skip + bias (operands independent)."""
    s = _skip_sum(inputs, ctx, 3)
    in_shape = ctx.in_shape(0)
    rank = len(in_shape)
    eps = float(ctx.attr("epsilon", 1e-12))
    outs = _rest(ctx, _rms(s, in_shape, [rank - 1], eps, _param(ctx, 2, rank, 1.0)))
    if len(outs) > 3:
        outs[3] = s
    return outs


@rule("LpNormalization")
def lp_normalization(inputs, ctx: RuleContext):
    """x / ||x||_p along ``axis`` (p = 1 or 2), the norm treated as its expectation:

        p = 2: E_f = mu_f / sqrt(S), Var_f = nu_f / S,    S = sum_f (nu_f + mu_f^2)
        p = 1: E_f = mu_f / S1,      Var_f = nu_f / S1^2, S1 = sum_f E|x_f|

    exact for p = 2 with zero-mean, equal-variance features (sum_f y_f^2 = 1); otherwise
    approximate with error O(1/n) over n features."""
    x = signal(inputs, 0)
    in_shape = ctx.in_shape(0)
    rank = len(in_shape)
    axis = int(ctx.attr("axis", -1)) % rank
    p = int(ctx.attr("p", 2))
    n = in_shape[axis]
    mu, nu = expand(x.mean, rank), expand(x.var, rank)
    shape = np.broadcast_shapes(mu.shape, nu.shape)
    mu, nu = np.broadcast_to(mu, shape), np.broadcast_to(nu, shape)
    if p == 2:
        norm = np.sqrt(n * (nu + mu**2).mean(axis=axis, keepdims=True))
    elif p == 1:
        src = x.source
        if src is not None and src.chain and max(np.ndim(src.mean), np.ndim(src.var)) <= rank:
            chain = src.chain + (Elementwise(("Abs",), np.abs),)
            e_abs, _ = gaussian_moments(chain, src.mean, src.var, smooth=False, rank=rank)
            e_abs = np.broadcast_to(e_abs, np.broadcast_shapes(e_abs.shape, shape))
        else:
            e_abs, _ = abs_closed(mu, nu)
        norm = n * e_abs.mean(axis=axis, keepdims=True)
    else:
        raise RuleError(f"LpNormalization with p = {p}")
    if np.any(norm <= 0):
        raise RuleError("a zero norm")
    return [Moments(mu / norm, nu / norm**2)]


__all__ = ["standardize"]
