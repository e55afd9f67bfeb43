"""Closed-form moments of piecewise-polynomial functions of a Gaussian.

HardSwish, HardSigmoid, Clip (ReLU6) and the like are polynomials of degree <= 2 on intervals.
For ``x ~ N(m, s^2)`` and ``f = p_i(x)`` on ``(lo_i, hi_i)``::

    E[f]   = sum_i E[p_i(x) 1{lo_i < x < hi_i}]
    E[f^2] = sum_i E[p_i(x)^2 1{lo_i < x < hi_i}]

and with ``x = m + s z``, ``E[x^k 1{a < x < b}] = sum_j C(k, j) m^(k-j) s^j T_j`` where the
truncated standard-normal moments ``T_j = E[z^j 1{alpha < z < beta}]`` follow from
``T_0 = Phi(beta) - Phi(alpha)``, ``T_1 = phi(alpha) - phi(beta)`` and
``T_j = alpha^(j-1) phi(alpha) - beta^(j-1) phi(beta) + (j-1) T_(j-2)``. Exact, and as cheap
for a million position cells as for one (a quadrature of a kinked function needs thousands of
nodes per cell).
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb

import numpy as np
from scipy import special

Piece = tuple[float, float, Sequence[float]]  # (lo, hi, polynomial coefficients c_0, c_1, ...)


def _truncated(alpha, beta, order: int) -> list[np.ndarray]:
    """T_0..T_order of the standard normal on (alpha, beta) (infinite ends allowed)."""
    def phi_and_power(t):
        finite = np.isfinite(t)
        tf = np.where(finite, t, 0.0)
        return np.where(finite, np.exp(-0.5 * tf * tf) / np.sqrt(2 * np.pi), 0.0), tf

    pa, a = phi_and_power(alpha)
    pb, b = phi_and_power(beta)
    out = [special.ndtr(beta) - special.ndtr(alpha), pa - pb]
    for j in range(2, order + 1):
        out.append(a ** (j - 1) * pa - b ** (j - 1) * pb + (j - 1) * out[j - 2])
    return out


def _poly_square(c: Sequence[float]) -> list[float]:
    out = [0.0] * (2 * len(c) - 1)
    for i, a in enumerate(c):
        for j, b in enumerate(c):
            out[i + j] += a * b
    return out


def _expect(coeffs: Sequence[float], m, s, t: list[np.ndarray]) -> np.ndarray:
    """E[p(x) 1{x in the piece}] for p = sum_k c_k x^k, x = m + s z."""
    total = 0.0
    for k, c in enumerate(coeffs):
        if c == 0.0:
            continue
        moment = sum(comb(k, j) * m ** (k - j) * s**j * t[j] for j in range(k + 1))
        total = total + c * moment
    return total


def moments(pieces: Sequence[Piece], mean, var) -> tuple[np.ndarray, np.ndarray]:
    """(E[f(x)], Var[f(x)]) for x ~ N(mean, var) and f given by ``pieces`` (zero elsewhere)."""
    m, v = np.broadcast_arrays(np.asarray(mean, np.float64), np.asarray(var, np.float64))
    s = np.sqrt(v)
    e1, e2 = 0.0, 0.0
    degree = 2 * max(len(c) for _, _, c in pieces) - 2
    with np.errstate(divide="ignore", invalid="ignore"):
        for lo, hi, c in pieces:
            alpha = np.where(s > 0, (lo - m) / np.where(s > 0, s, 1.0),
                             np.where(m > lo, -np.inf, np.inf))
            beta = np.where(s > 0, (hi - m) / np.where(s > 0, s, 1.0),
                            np.where(m < hi, np.inf, -np.inf))
            t = _truncated(alpha, beta, degree)
            e1 = e1 + _expect(c, m, s, t)
            e2 = e2 + _expect(_poly_square(c), m, s, t)
    return e1, np.maximum(e2 - e1 * e1, 0.0)


def hard_sigmoid(alpha: float, beta: float) -> list[Piece]:
    """clip(alpha x + beta, 0, 1) (alpha > 0)."""
    lo, hi = -beta / alpha, (1.0 - beta) / alpha
    return [(lo, hi, (beta, alpha)), (hi, np.inf, (1.0,))]


def hard_swish() -> list[Piece]:
    """x clip(x/6 + 1/2, 0, 1): x (x + 3)/6 on (-3, 3), x above."""
    return [(-3.0, 3.0, (0.0, 0.5, 1.0 / 6.0)), (3.0, np.inf, (0.0, 1.0))]


def clip(lo: float, hi: float) -> list[Piece]:
    """min(max(x, lo), hi) with lo < hi (either may be infinite)."""
    pieces: list[Piece] = [(lo, hi, (0.0, 1.0))]
    if np.isfinite(lo):
        pieces.append((-np.inf, lo, (lo,)))
    if np.isfinite(hi):
        pieces.append((hi, np.inf, (hi,)))
    return pieces


__all__ = ["clip", "hard_sigmoid", "hard_swish", "moments"]
