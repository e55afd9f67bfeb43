"""A product of two projections of one row: ``m = f_a(A^T h) f_b(B^T h)`` (a gated MLP's
``silu(gate(h)) * up(h)``, a GLU), the two dense outputs taken as independent by the moments
rules.

They are not: both read the row ``h``, whose covariance ``C`` gives column j of the two
projections the correlation ``rho_j = a_j^T C b_j / sqrt(a_j^T C a_j b_j^T C b_j)``; for weights
drawn independently ``E[rho_j^2] = tr C^2 / (tr C)^2 = q`` (:func:`row_concentration`: ``1/D``
for independent equal features, more for a row of low effective rank). Two consequences:

* the product's variance: by Mehler's formula the order-2 term of ``E[f_a^2(g) f_b^2(u)]`` adds
  ``q c_2(f_a^2) c_2(f_b^2)`` (:func:`cross_variance`; ``2 q nu_a nu_b`` for ``g u``);
* the product's row energy: ``|h|^2`` fluctuates from sample to sample (relative variance ``v =
  2 q + excess``, the Pairs' energy law) and each operand's second moment moves with the row's
  energy to a power ``alpha`` (:func:`energy_degree`: 1 for a linear or ReLU-like operand, 0 for
  a saturated gate), so the product's energy moves with ``Q^(alpha_a + alpha_b)``, ``Q`` the
  row's energy, taken as a gamma law of relative variance v: its relative variance
  :func:`power_relvar` is the product's energy excess, which a dense layer keeps and a mean of
  squares reads (``Var(y^2) = (2 + 3 excess) nu^2`` for a scale mixture:
  :func:`square_excess_variance`).
"""

from __future__ import annotations

import numpy as np

from ..special import gammaln
from .hermite import coefficients

_Z, _W = np.polynomial.hermite_e.hermegauss(48)
_W = _W / _W.sum()
_STEP = 1e-3  # relative step of the scale for the energy degree's central difference


def row_concentration(nu: np.ndarray, squared: float) -> float:
    """``q = tr C^2 / (tr C)^2 = mean(nu^2) / (D mean(nu)^2) + squared (D - 1) / D`` for a row of
    D features of variances ``nu`` and mean squared correlation ``squared``."""
    d = nu.size
    v = float(np.mean(nu))
    if d < 1 or v <= 0:
        return 0.0
    return float(np.mean(nu**2)) / (d * v * v) + squared * (d - 1) / d


def power_relvar(v: float, p: float) -> float:
    """Relative variance of ``Q^p`` for ``Q ~ Gamma(k = 1/v, theta = v)`` (mean 1, relative
    variance v): ``Gamma(k + 2p) Gamma(k) / Gamma(k + p)^2 - 1`` (``(4k + 6) / (k (k + 1))``
    for p = 2); 0 when ``v <= 0``. Past ``k = 1e4`` the log-gammas cancel, and the first
    order ``expm1(p^2 / k)`` is used."""
    if not v > 0 or p <= 0:
        return 0.0
    k = 1.0 / v
    if k > 1e4:
        return float(np.expm1(p * p / k))
    return float(np.expm1(gammaln(k + 2 * p) + gammaln(k) - 2 * gammaln(k + p)))


def energy_degree(fn, mean: float, var: float) -> float:
    """``alpha = d log E[f(mean + s sigma z)^2] / d log s^2`` at s = 1, ``z ~ N(0, 1)``: how an
    operand's second moment follows its input's scale (Gauss-Hermite; 0 when undefined)."""
    if not var > 0:
        return 0.0
    sd = np.sqrt(var)
    with np.errstate(all="ignore"):
        up, down = (float(_W @ np.square(fn(mean + sd * np.exp(h) * _Z)))
                    for h in (_STEP, -_STEP))
    if not (up > 0 and down > 0 and np.isfinite(up) and np.isfinite(down)):
        return 0.0
    return float((np.log(up) - np.log(down)) / (4 * _STEP))


def cross_variance(fn_a, mean_a: float, var_a: float, fn_b, mean_b: float, var_b: float,
                   q: float) -> float:
    """The variance that the correlation of the two operands' Gaussians adds to ``f_a f_b``,
    to order ``rho^2`` with ``E[rho^2] = q``: ``q c_2(f_a^2) c_2(f_b^2)``, ``c_2(h) = E[h(z)
    He_2(xi)] / sqrt(2)`` (Mehler's formula on the squares; the order-1 term averages out over
    columns of random sign)."""
    if q <= 0:
        return 0.0
    ca, _ = coefficients(lambda z: np.square(fn_a(z)), mean_a, var_a)
    cb, _ = coefficients(lambda z: np.square(fn_b(z)), mean_b, var_b)
    found = q * float(ca[2]) * float(cb[2])
    return found if np.isfinite(found) else 0.0


def shared_scale(alpha_a: float, alpha_b: float, excess: float) -> float:
    """``E[Q^(alpha_a + alpha_b)] / (E[Q^alpha_a] E[Q^alpha_b]) = 1 + alpha_a alpha_b e`` to
    first order, Q the row's energy scale of relative variance e: the row as ``s z``, ``z``
    Gaussian of the row's covariance (energy relative variance ``2 q``), so that ``(1 + e) (1
    + 2 q) = 1 + 2 q + excess``: ``e = excess / (1 + 2 q)`` (negative for a normalised row,
    whose energy is constant: ``g u`` on a sphere has ``E[g^2 u^2] = nu_g nu_u``)."""
    return max(1.0 + alpha_a * alpha_b * excess, 0.0)


def square_excess_variance(excess: float, nu4: float) -> float:
    """What an energy excess e adds to ``Var(x^2)`` for a row that is a scale mixture of
    Gaussians (``x = mu + s sigma z``, ``E s^2 = 1``, ``Var s^2 = e``): ``Var(x^2) = 4 mu^2
    sigma^2 + (2 + 3 e) sigma^4``, so ``3 e mean(sigma^4)`` (``nu4``)."""
    return 3.0 * excess * nu4 if excess > 0 else 0.0


__all__ = ["cross_variance", "energy_degree", "power_relvar", "row_concentration",
           "shared_scale", "square_excess_variance"]
