"""Backward rules of the normalization layers, with the statistics of the batch (training
semantics, as the forward analysis).

BatchNormalization, per channel over the M = N S values of the batch (N samples, S
positions), ``x_hat = (x - mean_b) / sigma_b``::

    dx = (gamma / sigma_b) (dy - mean(dy) - x_hat mean(dy x_hat))

The projection removes the batch mean of dy (variance ``u / N``, u the variance of a sample's
spatial mean: all of it for a gradient broadcast by a global pool) and its component along
x_hat (``E[mean(dy x_hat)^2] = E[dy^2] / M`` for dy independent of x)::

    Var[dx] = gamma^2 / sigma_b^2 (Var[dy] - u / N - E[dy^2] / M),   E[dx] = 0,
    u' = gamma^2 / sigma_b^2 u (1 - 1/N)

``1 / sigma_b^2`` is random with M values per channel: for Gaussian values
``sigma_b^2 ~ sigma^2 chi^2_{M-1} / M`` and ``E[1 / sigma_b^2] = M / ((M - 3) sigma^2)`` (60%
above ``1 / sigma^2`` at M = 8), with sigma^2 the channel's predicted variance; eps is added. Scale and bias
gradients: ``dgamma = sum dy x_hat`` (variance ``M E[dy^2]``), ``dbeta = sum dy`` (mean
``M E[dy]``, variance ``N S^2 u``).

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
from .context import GradContext
from .gradient import Gradient, along
from .registry import rule
from .linear import dense_weight
from .tokens import coherent_gain, kept_unless


def _param(ctx: GradContext, index: int, size: int, default: float) -> np.ndarray:
    value = ctx.const(index)
    if value is None:
        if ctx.has_input(index):
            raise RuleError(f"input {index} is a signal")
        return np.full(size, default)
    return np.broadcast_to(np.asarray(value, dtype=np.float64).reshape(-1), (size,))


def inverse_batch_variance(var: np.ndarray, count: int, eps: float) -> np.ndarray:
    """E[1 / (sigma_b^2 + eps)] for the biased variance sigma_b^2 of ``count`` Gaussian values
    of variance ``var``: ``f / (var + f eps)`` with ``f = count / (count - 3)`` (the module
    docstring; the limits var >> eps and var << eps are exact), f bounded for count <= 4."""
    factor = count / (count - 3.0) if count > 4 else count / 1.5
    return factor / (var + eps * factor)


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
    sigma2 = inverse_batch_variance(x_var, m_count, eps)
    m, v = g.channels(rank, c)
    u = np.minimum(g.channel_sample_var(rank, c, s), v)
    second = v + m * m
    kept = np.maximum(v - u / n - second / m_count, 0.0)
    a2 = gamma**2 * sigma2
    sample_var = a2 * u * (1.0 - 1.0 / n) if rank > 2 else None
    dx = along(np.zeros(c), a2 * kept, 1, rank, sample_var, g.profile)
    params = [None, None]
    if ctx.is_parameter(1):
        params[0] = Gradient.scalar(0.0, float(np.mean(m_count * second)))
    if ctx.has_input(2) and ctx.is_parameter(2):
        params[1] = Gradient(m_count * m, n * s * s * u).pooled()
    return _rest(ctx, dx, params)


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
        x_hat = ctx.y(0).tokens if ctx.node.output[0] in ctx.forward else None
        params[0] = dense_weight(1.0, 0.0, replace(g, cov=None), rows, rank, d, x_hat)
    if ctx.has_input(2) and ctx.is_parameter(2):
        gain = coherent_gain(kept_unless(g.tokens, rank, [rank - 1]))
        params[1] = Gradient(rows * m, rows * v * gain).pooled()
    return _rest(ctx, dx, params)
