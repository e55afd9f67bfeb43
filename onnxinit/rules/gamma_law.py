"""Moments of a gamma law, the positive law matched to a mean and a variance
(``k = m^2 / v``, ``theta = v / m``) where a Gaussian would reach below 0: a mean of squares,
a norm, the denominator of a normalisation."""

from __future__ import annotations

import numpy as np

from ..special import gammaln


def gamma_moment(k, theta, p):
    """``E[Q^p]`` for ``Q ~ Gamma(shape k, scale theta)``: ``theta^p Gamma(k + p) / Gamma(k)``
    (finite for ``k + p > 0``; ``p < 0`` for inverse moments)."""
    return np.exp(gammaln(k + p) - gammaln(k)) * np.asarray(theta, np.float64) ** p


def gamma_sqrt_moments(mu, nu):
    """Mean and variance of ``sqrt(Q)`` for ``Q ~ Gamma`` of mean ``mu > 0`` and variance
    ``nu``: ``E = sqrt(theta) Gamma(k + 1/2) / Gamma(k)``, ``Var = mu - E^2``; where the shape
    ``k = mu^2 / nu`` is over 1e6 (a round-off variance on a constant row, where the Gamma ratio
    loses its digits) the delta method: ``E = sqrt(mu) (1 - 1/(8k))``, ``Var = nu / (4 mu)``."""
    fixed = nu <= 1e-6 * mu * mu
    k, theta = mu * mu / np.where(fixed, 1.0, nu), nu / mu
    mean = np.where(fixed, np.sqrt(mu) * (1 - nu / (8 * mu * mu)),
                    gamma_moment(np.where(fixed, 1.0, k), theta, 0.5))
    return mean, np.where(fixed, nu / (4 * mu), np.maximum(mu - mean * mean, 0.0))


__all__ = ["gamma_moment", "gamma_sqrt_moments"]
