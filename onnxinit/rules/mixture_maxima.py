"""The maximum of taps drawn from Gaussian mixtures (a ReLU's zeros and its positive part),
joined by a Gaussian copula: the max-pool rule's case of mixture inputs
(``max_windows``); the single-Gaussian cases are :mod:`.maxima`'s."""

from __future__ import annotations

import numpy as np

from .. import special
from .context import RuleError
from .maxima import SPAN, factor_rule

_MIXTURE_GRID = 97  # grid points of the maximum's CDF for mixture taps (atoms need a finer one)


def max_of_mixtures(weight, mean, std, count, rho):
    """(E[M], Var[M]) for M the maximum of taps each drawn from its own Gaussian mixture
    ``F_t(a) = sum_k w_tk Phi((a - m_tk) / s_tk)`` (``s = 0``: an atom, a ReLU's zeros),
    ``count_t`` times each, the taps joined by a Gaussian copula of pairwise correlation
    ``rho`` (one common factor, as :func:`.maxima.max_of_correlated_gaussians`): ``x_t = F_t^-1(Phi(z_t))``,
    ``z_t = sqrt(rho) w + sqrt(1 - rho) e_t``, so that given w

        P(M <= a | w) = prod_t Phi((Phi^-1(F_t(a)) - sqrt(rho) w) / sqrt(1 - rho))^count_t

    (a single Gaussian per tap is :func:`.maxima.max_of_correlated_gaussians`' case). The moments by
    the midpoint rule on a grid over the taps' support, laid so that the atoms fall on
    midpoints; over w by Gauss-Hermite. ``weight``, ``mean``, ``std`` are ``[K, T, *P]``,
    ``count`` ``[T, *P]``, ``rho`` broadcast to ``[*P]``; returns ``[*P]`` arrays."""
    weight, mean, std = np.broadcast_arrays(*(np.asarray(a, np.float64)
                                              for a in (weight, mean, std)))
    count = np.broadcast_to(np.asarray(count, np.float64), mean.shape[1:])
    problems = mean.shape[2:]
    rho = np.clip(np.broadcast_to(np.asarray(rho, np.float64), problems), 0.0, 1.0 - 1e-9)
    present = (count > 0)[None] & (weight > 0)
    if not np.all(present.any(axis=(0, 1))):
        raise RuleError("a window with no valid tap")
    big = np.finfo(np.float64).max
    lo = np.where(present, mean - SPAN * std, big).min(axis=(0, 1))
    hi = np.maximum(np.where(present, mean + SPAN * std, -big).max(axis=(0, 1)), lo + 1e-12)
    step = (hi - lo) / (_MIXTURE_GRID - 1)
    atoms = present & (std == 0)
    atom = np.where(atoms, mean, -big).max(axis=(0, 1))  # the highest atom, at a midpoint
    shift = np.where(atom > lo, np.mod(atom - lo, step) - 0.5 * step, 0.0)
    lo = lo + shift - step
    u = np.arange(_MIXTURE_GRID + 1).reshape((-1,) + (1,) * len(problems))
    grid = lo + step * u  # [G, *P]: interval (g_i-1, g_i] holds the value at its midpoint
    cdf_t = np.zeros((grid.shape[0],) + mean.shape[1:])  # [G, T, *P]
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(mean.shape[0]):
            z = (grid[:, None] - mean[k]) / np.where(std[k] > 0, std[k], 1.0)
            part = np.where(std[k] > 0, special.ndtr(z), grid[:, None] >= mean[k])
            cdf_t += weight[k] * part
        cdf_t = np.clip(cdf_t / np.maximum(weight.sum(axis=0), 1e-300), 0.0, 1.0)
        if np.any(rho > 0):
            nodes, probs = factor_rule(rho)
            q = special.ndtri(cdf_t)
            given = (special.ndtr((q - np.sqrt(rho) * z) / np.sqrt(1.0 - rho)) for z in nodes)
        else:
            probs, given = [1.0], [cdf_t]
        cdf = np.zeros(grid.shape)
        for p, g in zip(probs, given):
            cdf += p * np.where(count > 0, g ** count, 1.0).prod(axis=1)
    cdf[-1] = 1.0
    mass = np.diff(cdf, axis=0)
    mid = 0.5 * (grid[1:] + grid[:-1])
    e = (mass * mid).sum(axis=0)
    var = (mass * (mid - e) ** 2).sum(axis=0)
    if not (np.all(np.isfinite(e)) and np.all(np.isfinite(var))):
        raise RuleError("the input distribution is not finite")
    return e, var


__all__ = ["max_of_mixtures"]
