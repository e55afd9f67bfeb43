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


__all__ = ["gamma_moment"]
