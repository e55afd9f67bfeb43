"""The sum of squares of a token's correlated features (``ReduceSumSquare`` / ``ReduceL2``
over the last axis: ``F.normalize``, a vector's length) with the features' covariance.

The reduce rule sums the squares' cumulants as if the K features were independent. For a
feature vector ``x ~ N(mu, S)`` the quadratic form ``Q = x^T x`` has (the cumulants of a
Gaussian quadratic form)

    k2 = 2 tr(S^2) + 4 mu^T S mu,     k3 = 8 tr(S^3) + 24 mu^T S^2 mu

and independent features keep only S's diagonal. Features that are a linear map of fewer
inputs (a dense layer after a patch or depthwise stage) have a low-rank S: their squares move
together and ``Var Q`` is many times the independent sum (SwiftFormer's key norms: 15x). The
factors here, full over diagonal, scale the reduce rule's k2 and k3, which keep the squares'
own (non-Gaussian) cumulants.

A dense layer of features without a field (``y = W^T x + b``, ``x`` independent) starts none
for the next dense layer (its random weights average the cross terms out), but a sum of
squares over y has all-ones weights: ``S = W^T diag(nu_x) W`` for the weights at hand
(:func:`.channel_covariance.row_covariance`, up to ``ROW_FIELD_FEATURES`` features), with
``tr S^3`` in k3. The pairs' ``squared`` (:mod:`.feature_pairs`) carries ``tr S^2`` alone, and
the skewness kept from independent features read ReduceL2 of a square dense layer's rows
1.11-1.15x at 16 features, 1.05x at 48 (with S: 0.98x, 1.00x).
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from .channel_covariance import covariance, row_covariance
from .context import RuleContext

ROW_FIELD_FEATURES = 1024  # a field is [n, n] and k3 takes S^3: n^3 work


def quadratic_cumulants(mu: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """(k2, k3) of ``x^T x`` for ``x ~ N(mu, S)``: ``2 tr(S^2) + 4 mu^T S mu`` and
    ``8 tr(S^3) + 24 mu^T S^2 mu``."""
    s2 = s @ s
    return (float(2 * np.trace(s2) + 4 * mu @ s @ mu),
            float(8 * np.trace(s2 @ s) + 24 * mu @ s2 @ mu))


def feature_covariance(ctx: RuleContext, x: Moments, shape, axes):
    """(per-feature means, covariance S) of the features summed over the last axis when they
    carry a field (module docstring), the means pooled over the other axes; None where the
    reduction is over other axes or the features count as independent. Cheap: reading the
    memoised field, the independent cumulants in closed form (``2 sum nu^2 + 4 sum mu^2 nu``,
    ``8 sum nu^3 + 24 sum mu^2 nu^2``) only to rule out constant features."""
    rank = len(shape)
    if sorted(a % rank for a in axes) != [rank - 1]:
        return None
    f = covariance(ctx, ctx.node.input[0])
    n = shape[-1]
    if f is None and n <= ROW_FIELD_FEATURES:  # a dense layer's rows: the weights at hand
        f = row_covariance(ctx, ctx.node.input[0])
    if f is None or f.axis != rank - 1 or f.head_axis is not None or f.cov.shape != (n, n):
        return None
    mu = np.broadcast_to(x.values_along(rank - 1, n)[0], (n,)).astype(np.float64)
    s = np.asarray(f.cov, dtype=np.float64)
    if min(_independent_cumulants(mu, np.diag(s))) <= 0:
        return None
    return mu, s


def _independent_cumulants(mu: np.ndarray, nu: np.ndarray) -> tuple[float, float]:
    """:func:`quadratic_cumulants` of a diagonal S = diag(nu)."""
    m2 = mu * mu
    return (float(2 * (nu * nu).sum() + 4 * (m2 * nu).sum()),
            float(8 * (nu**3).sum() + 24 * (m2 * nu * nu).sum()))


def square_sum_factors(ctx: RuleContext, x: Moments, shape, axes) -> tuple[float, float] | None:
    """(k2 factor, k3 factor) of the squares' sum over the last axis with the features'
    covariance (:func:`feature_covariance`), full over diagonal; None where it does not apply."""
    found = feature_covariance(ctx, x, shape, axes)
    if found is None:
        return None
    mu, s = found
    full = quadratic_cumulants(mu, s)
    independent = _independent_cumulants(mu, np.diag(s))
    if not all(np.isfinite(full)):
        return None
    return max(full[0], 0.0) / independent[0], max(full[1], 0.0) / independent[1]
