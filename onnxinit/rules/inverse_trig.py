"""Inverse cosine and sine (Acos, Asin): functions defined on [-1, 1] only.

Their input is a value the model has bounded there: a cosine (YOSO's attention takes
``acos(q_hat k_hat^T)`` of two L2-normalised rows), a clamped or squashed value. Where the
input's law (its Gaussian source through its chain of element-wise functions) stays inside
the bounds (outside with probability at most 1e-6: ``acos(tanh(x))``, ``asin(clip(x))``), the
function is integrated over it as any element-wise function. Where it does not, the law is a
Gaussian of a bounded value's mean and variance, whose tails pass the bounds with a
probability the value has not (``2 Phi(-4) = 6e-5`` for the cosine of two random directions in
16 dimensions, ``sigma = 1/4``; 1% in YOSO's second layer, whose tokens share a direction): drawn
from or integrated over directly, ``acos`` of those tails is NaN, and the analysis stopped ("the
empirical fallback measured a non-finite mean or variance"). There the input is taken as the
Beta law on [-1, 1] of its mean ``mu`` and variance ``v`` (the law of the cosine of two random
directions in ``d`` dimensions is the symmetric one, ``a = b = (d - 1) / 2``)::

    u = (mu + 1) / 2,  k = u (1 - u) / (v / 4) - 1,  (x + 1) / 2 ~ Beta(u k, (1 - u) k)

and ``E[f]``, ``Var[f]`` are averages over its quantiles (``NODES`` midpoints), one law per
(mean, variance) pair on a grid of steps 1e-4 in the mean and 0.1% in the variance. No Beta has
``v >= 1 - mu^2``: such an input is refused (``RuleError``: the node is then measured alone).
"""

from __future__ import annotations

import numpy as np

from .. import special
from ..moments import Moments
from .context import RuleContext, RuleError, signal
from .elementwise import ElementwiseFn, apply_elementwise, base_source, elementwise_function
from .elementwise import rank_of
from .gaussian import compose, expand, probability
from .registry import rule

INSIDE = 1e-6  # the probability outside [-1, 1] up to which the input's own law is integrated
NODES = 128  # quantiles of the Beta law averaged over


def _bounded(fn):
    return lambda x: fn(np.clip(x, -1.0, 1.0))


@elementwise_function("Acos")
def acos_function(ctx: RuleContext, rank):
    """y = arccos(x), x in [-1, 1] (the input clipped there)."""
    return ElementwiseFn(("Acos",), _bounded(np.arccos))


@elementwise_function("Asin")
def asin_function(ctx: RuleContext, rank):
    """y = arcsin(x), x in [-1, 1] (the input clipped there)."""
    return ElementwiseFn(("Asin",), _bounded(np.arcsin))


def outside_bounds(x: Moments, rank: int | None) -> float:
    """The largest probability, over the tracked indices, that ``x``'s law (its Gaussian
    source through its chain) puts outside ``[-1, 1]``."""
    src = base_source(x, rank)
    if src.chain:
        inner = compose(src.chain)
        out = probability(lambda z: ~(np.abs(inner(z)) <= 1.0), src.mean, src.var, rank=rank)
    else:  # a Gaussian: Phi((-1 - mu) / s) + Phi((mu - 1) / s)
        mu, s = np.broadcast_arrays(expand(src.mean, rank), np.sqrt(expand(src.var, rank)))
        with np.errstate(divide="ignore", invalid="ignore"):
            out = special.ndtr((-1.0 - mu) / s) + special.ndtr((mu - 1.0) / s)
        out = np.where(s > 0, out, (np.abs(mu) > 1.0).astype(np.float64))
    return float(np.max(out)) if np.size(out) else 0.0


def beta_moments(fn, mean, var) -> tuple[np.ndarray, np.ndarray]:
    """(E[fn(x)], Var[fn(x)]) for ``x`` on [-1, 1] of the Beta law with mean ``mean`` and
    variance ``var`` (per element; a point where ``var`` is 0), by the midpoint rule over
    ``NODES`` of its quantiles. RuleError where no such law exists (``var >= 1 - mean^2``)."""
    mu, v = np.broadcast_arrays(np.asarray(mean, dtype=np.float64),
                                np.asarray(var, dtype=np.float64))
    if np.any(np.abs(mu) >= 1.0) or np.any(v >= 1.0 - mu * mu):
        raise RuleError("no law on [-1, 1] has the input's mean and variance")
    # the laws of the (mean, variance) pairs on a grid of steps 1e-4 in the mean and 0.1% in
    # the variance (a tracked tensor of cosines holds one pair per element)
    with np.errstate(divide="ignore"):
        grid = np.stack([np.round(mu.ravel() * 1e4), np.round(np.log(v.ravel()) * 1e3)], axis=1)
    _, first, where = np.unique(grid, axis=0, return_index=True, return_inverse=True)
    pairs = np.stack([mu.ravel()[first], v.ravel()[first]], axis=1)
    u, vu = (pairs[:, 0] + 1.0) / 2.0, pairs[:, 1] / 4.0
    point = vu <= 0.0
    k = np.where(point, 1.0, u * (1.0 - u) / np.where(point, 1.0, vu) - 1.0)
    p = (np.arange(NODES) + 0.5) / NODES
    x = 2.0 * special.betaincinv((u * k)[:, None], ((1.0 - u) * k)[:, None], p) - 1.0
    x = np.where(point[:, None], pairs[:, :1], x)
    y = np.asarray(fn(x), dtype=np.float64)
    e, var_y = y.mean(axis=1), np.where(point, 0.0, y.var(axis=1))
    where = np.reshape(where, -1)
    return e[where].reshape(mu.shape), var_y[where].reshape(mu.shape)


def _bounded_rule(inputs, ctx: RuleContext, fn) -> list:
    x = signal(inputs, 0)
    rank = rank_of(ctx)
    if outside_bounds(x, rank) <= INSIDE:
        return apply_elementwise(inputs, ctx)
    mean, var = beta_moments(_bounded(fn), expand(x.mean, rank), expand(x.var, rank))
    return [Moments(mean, var)]


@rule("Acos")
def acos(inputs, ctx: RuleContext):
    """y = arccos(x) on x in [-1, 1]: over x's law where it stays inside, else over the Beta law
    on [-1, 1] of x's mean and variance (refused where none has them)."""
    return _bounded_rule(inputs, ctx, np.arccos)


@rule("Asin")
def asin(inputs, ctx: RuleContext):
    """y = arcsin(x) on x in [-1, 1]: over x's law where it stays inside, else over the Beta law
    on [-1, 1] of x's mean and variance (refused where none has them)."""
    return _bounded_rule(inputs, ctx, np.arcsin)
