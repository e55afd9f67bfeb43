"""Backward rules of the normalization layers, with the statistics of the batch (training
semantics, as the forward analysis).

BatchNormalization, per channel over the M = N S values of the batch (N samples, S
positions), ``x_hat = (x - mean_b) / sigma_b``::

    dx = (gamma / sigma_b) (dy - mean(dy) - x_hat mean(dy x_hat))

The projection removes the batch mean of dy (variance ``u / N``, u the variance of a sample's
spatial mean: all of it for a gradient broadcast by a global pool) and its component along
x_hat. With dy independent of x, ``E[x_hat_p x_hat_q] = -1 / (M - 1)`` for p != q (x_hat sums
to 0) and dy correlated only within a sample, that component's share per value is what the
mean left over M - 1: ``(Var[dy] - u / N) / (M - 1)`` (``E[dy^2] / M`` when the values are
independent; at batch 1 on a 2x2 map, where a pooled gradient is nearly alike across the
positions, E[dy^2] / M removed more than was left)::

    Var[dx] = gamma^2 E[1 / sigma_b^2] (Var[dy] - u / N) (1 - 1 / (M - 1)),   E[dx] = 0,
    u' = gamma^2 E[1 / sigma_b^2] u (1 - 1/N)

Where dy is ``f'(y) g`` with g of exactly zero batch mean (a ReLU between two BatchNorms), the
two removed parts are smaller (:func:`.batch_share.removed`: ReLU 0.50 and 0.68 of
``E[dy^2] / M`` instead of 1 and 1); dx itself has zero batch mean (``Gradient.centred``).

``1 / sigma_b^2`` is random with M values per channel: ``sigma_b^2 ~ W chi^2_{M-1} / (M - 1)``
with ``W = E[sigma_b^2] = s P (1 - r / M)``, P the channel's predicted variance, r the spread
of the input's batch mean relative to independent values (1 for those; 0.03 after
``Conv(relu(BN))``: the previous BatchNorm fixed the batch's first two moments) and s the
variance of relu of batch-standardized values against a Gaussian's (0.965 at M = 8)
(:func:`.batch_share.input_law`)::

    E[1 / (sigma_b^2 + eps)] = g / (W + g eps),   g = (M - 1) / (M - 3)

(independent values: ``M / ((M - 3) P)``, 60% above ``1 / P`` at M = 8).
Scale and bias gradients: ``dgamma = sum dy x_hat`` (variance ``M E[dy^2]``), ``dbeta = sum dy``
(mean ``M E[dy]``, variance ``N S^2 u``).

InstanceNormalization (per sample and channel over the S positions) and GroupNormalization
(per sample and group of k = C/G channels over k S values): the same projection within each
sample's group of n values, ``E[1/sigma^2] = 1 / (spread + eps + W / g)`` with the spread of
the group's means (channels, positions) fixed, W the expected sample variance of the random
part and ``g = (n - 1) / (n - 3)`` (E[1/chi^2]), the
group mean of dy removed (a channel's ``u``; a group's ``mean_c u_c / k``, channels
independent) and its component along x_hat (``E[dy^2] / n``)::

    Var[dx_c] = gamma_c^2 E[1/sigma^2] (E[dy_c^2] - (u_g + m_g^2) - E[dy^2]_g / n)

A sample's spatial mean of dx is zero after InstanceNormalization (``u' = 0``) and keeps
``u' = gamma^2 E[1/sigma^2] u (1 - 1/k)`` after GroupNormalization. Scale and bias gradients
as BatchNormalization's.

LayerNormalization over the last D features of each row: the same projection per row,
``Var[dx] = mean_f(gamma_f^2 Var[dy_f]) (1 - 2/D) / sigma^2`` with sigma^2 the row variance
predicted by the forward pass; ``dgamma_f = sum_r dy x_hat`` (variance ``R E[dy_f^2]``),
``dbeta_f = sum_r dy`` over the R rows; rows that are tokens of one sample add with their
covariance (the token fields, :func:`.linear.dense_weight`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..rules.context import RuleError
from .activations import positions_of
from .batch_share import Centred, input_law, removed
from ..spatial import dense
from .context import GradContext
from .gradient import Gradient, along
from .registry import rule
from .linear import dense_weight
from .tokens import as_profile, coherent_gain, kept_unless


def _param(ctx: GradContext, index: int, size: int, default: float) -> np.ndarray:
    value = ctx.const(index)
    if value is None:
        if ctx.has_input(index):
            raise RuleError(f"input {index} is a signal")
        return np.full(size, default)
    return np.broadcast_to(np.asarray(value, dtype=np.float64).reshape(-1), (size,))


def inverse_batch_variance(var: np.ndarray, count: int, eps: float,
                           share: float = 1.0) -> np.ndarray:
    """E[1 / (sigma_b^2 + eps)] for the biased variance sigma_b^2 of ``count`` values of
    variance ``var`` whose batch mean varies by ``share var / count`` (``share`` 1: independent
    values): ``g / (var (1 - share / count) + g eps)`` with ``g = (count - 1) / (count - 3)``,
    E[1 / chi^2_{count-1}] times count - 1 (the module docstring; the limits var >> eps and
    var << eps are exact), g bounded for count <= 4."""
    g = (count - 1) / (count - 3.0) if count > 4 else (count - 1) / 1.5
    within = var * (1.0 - share / count) if count > 1 else var
    return g / (within + eps * g)


def sample_inverse_variance(random: np.ndarray, fixed: np.ndarray, count: int,
                            eps: float) -> np.ndarray:
    """E[1 / (sigma^2 + eps)] for a sample variance of ``count`` values made of a fixed spread
    ``fixed`` (different means) and a random part of expectation ``random``:
    ``1 / (fixed + eps + random / g)`` with ``g = (count - 1) / (count - 3)`` the factor
    E[1/chi^2_{count-1}] gives the random part alone (finite from count = 4; bounded below);
    exact in both limits."""
    g = (count - 1) / (count - 3.0) if count >= 4 else (count - 1) / 0.5
    return 1.0 / (fixed + eps + random / g)


def _rest(ctx: GradContext, first, params) -> list:
    return [first, *params] + [None] * (len(ctx.node.input) - 1 - len(params))


@rule("BatchNormalization")
def batch_normalization(grads, ctx: GradContext):
    """See the module docstring."""
    g = grads[0]
    shape = ctx.in_shape(0)
    rank = len(shape)
    c = shape[1]
    s = positions_of(ctx)
    n = ctx.batch
    m_count = n * s
    eps = float(ctx.attr("epsilon", 1e-5))
    gamma = _param(ctx, 1, c, 1.0)
    _, x_var = ctx.x(0).expand_rank(rank).values_along(1, c)
    law = input_law(ctx.graph, ctx.forward, ctx.node.input[0], n)
    sigma2 = inverse_batch_variance(x_var * law.scale, m_count, eps, law.r1)
    m, v = g.channels(rank, c)
    u = np.minimum(g.channel_sample_var(rank, c, s), v)
    second = v + m * m
    batch_mean, along_x_hat = removed(g.centred, v, u, n, m_count)
    kept = np.maximum(v - batch_mean - along_x_hat, 0.0)
    a2 = gamma**2 * sigma2
    sample_var = a2 * u * (1.0 - 1.0 / n) if rank > 2 else None
    dx = replace(along(np.zeros(c), a2 * kept, 1, rank, sample_var, g.profile),
                 centred=Centred.whole())
    params = [None, None]
    if ctx.is_parameter(1):
        params[0] = Gradient.scalar(0.0, float(np.mean(m_count * second)))
    if ctx.has_input(2) and ctx.is_parameter(2):
        params[1] = Gradient(m_count * m, n * s * s * u).pooled()
    return _rest(ctx, dx, params)


def _group_values(a: np.ndarray, groups: int) -> np.ndarray:
    """Per-channel values averaged within their group, repeated per channel."""
    c = a.size
    return np.repeat(a.reshape(groups, c // groups).mean(axis=1), c // groups)


def per_sample_groups(g: Gradient, ctx: GradContext, groups: int, gamma: np.ndarray) -> list:
    """The backward rule of a normalization over each sample's groups of channels and all
    positions (module docstring)."""
    shape = ctx.in_shape(0)
    rank, c = len(shape), shape[1]
    s = positions_of(ctx)
    k = c // groups
    n = k * s
    eps = float(ctx.attr("epsilon", 1e-5))
    x = ctx.x(0)
    x_mean, x_var = x.expand_rank(rank).values_along(1, c)
    position_spread = np.zeros(c)
    if x.spatial is not None and rank > 2:  # position means differ (zero-padded borders)
        means, variances = dense(x.spatial)
        means = np.broadcast_to(means, (1, c, *shape[2:])).reshape(c, -1)
        variances = np.broadcast_to(variances, (1, c, *shape[2:])).reshape(c, -1)
        position_spread, x_var = means.var(axis=1), variances.mean(axis=1)
    spread = (_group_values(x_mean**2, groups) - _group_values(x_mean, groups) ** 2
              + _group_values(position_spread, groups))
    inverse = sample_inverse_variance(_group_values(x_var, groups) * (n - 1) / n, spread, n, eps)
    m, v = g.channels(rank, c)
    u = np.minimum(g.channel_sample_var(rank, c, s), v) if rank > 2 else v
    second = v + m * m
    removed = (_group_values(u, groups) / k + _group_values(m, groups) ** 2
               + _group_values(second, groups) / n)
    a2 = gamma**2 * inverse
    kept = np.maximum(second - removed, 0.0)
    sample_var = a2 * u * (1.0 - 1.0 / k) if rank > 2 else None
    dx = along(np.zeros(c), a2 * kept, 1, rank, sample_var, g.profile)
    params = [None, None]
    if ctx.is_parameter(1):
        params[0] = Gradient.scalar(0.0, float(np.mean(ctx.batch * s * second)))
    if ctx.has_input(2) and ctx.is_parameter(2):
        params[1] = Gradient(ctx.batch * s * m, ctx.batch * s * s * u).pooled()
    return _rest(ctx, dx, params)


@rule("InstanceNormalization")
def instance_normalization(grads, ctx: GradContext):
    """See the module docstring."""
    c = ctx.in_shape(0)[1]
    return per_sample_groups(grads[0], ctx, c, _param(ctx, 1, c, 1.0))


@rule("GroupNormalization")
def group_normalization(grads, ctx: GradContext):
    """See the module docstring; scale per group at opset 18 ([G]), per channel from 21."""
    c = ctx.in_shape(0)[1]
    groups = int(ctx.attr("num_groups"))
    if groups <= 0 or c % groups:
        raise RuleError("channels not divisible by num_groups")
    scale = ctx.const(1)
    if scale is not None and np.size(scale) == groups and groups != c:
        gamma = np.repeat(np.asarray(scale, dtype=np.float64).reshape(-1), c // groups)
    else:
        gamma = _param(ctx, 1, c, 1.0)
    return per_sample_groups(grads[0], ctx, groups, gamma)


@rule("LayerNormalization")
def layer_normalization(grads, ctx: GradContext):
    """See the module docstring."""
    g = grads[0]
    shape = ctx.in_shape(0)
    rank = len(shape)
    axis = int(ctx.attr("axis", -1)) % rank
    if axis != rank - 1:
        raise RuleError("LayerNormalization over more than the last axis")
    d = shape[-1]
    rows = int(np.prod(shape[:-1]))
    eps = float(ctx.attr("epsilon", 1e-5))
    gamma = _param(ctx, 1, d, 1.0)
    x_mean, x_var = ctx.x(0).expand_rank(rank).values_along(rank - 1, d)
    sigma2 = float(np.mean(x_var) * (d - 1) / d + np.var(x_mean)) + eps
    m, v = g.expand_rank(rank).values_along(rank - 1, d)
    gm = gamma * m
    var = (gamma**2 * v * (1.0 - 2.0 / d) + (gm - gm.mean()) ** 2) / sigma2
    dx = Gradient(0.0, float(np.mean(var)), tokens=kept_unless(g.tokens, rank, [rank - 1]))
    params = [None, None]
    if ctx.is_parameter(1):  # dgamma = sum_r dy x_hat: x_hat's own field, mean 0, variance 1
        x_hat = as_profile(ctx.y(0), ctx.out_shape()) if ctx.node.output[0] in ctx.forward \
            else None
        params[0] = dense_weight(1.0, 0.0, replace(g, cov=None), rows, rank, d, x_hat)
    if ctx.has_input(2) and ctx.is_parameter(2):
        gain = coherent_gain(kept_unless(g.tokens, rank, [rank - 1]))
        params[1] = Gradient(rows * m, rows * v * gain).pooled()
    return _rest(ctx, dx, params)
