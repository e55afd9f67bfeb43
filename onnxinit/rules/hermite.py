"""Correlated Gaussians through a function: Hermite coefficients and Mehler's formula.

For ``z = m + s xi`` with ``xi ~ N(0, 1)`` and a function f, the normalised Hermite coefficients
are ``c_n = E[f(z) He_n(xi)] / sqrt(n!)`` (He_n the probabilists' Hermite polynomials), so that
``E[f(z)] = c_0`` and ``Var f(z) = sum_{n>=1} c_n^2``. For two jointly Gaussian ``z_a, z_b``
with correlation ``rho`` (each with its own mean and scale, Mehler's formula)::

    E[f(z_a) g(z_b)] = sum_{n>=0} c_n(f, z_a) c_n(g, z_b) rho^n

:func:`coefficients` computes ``c_0..c_N`` (N = 8) and the variance the first N orders leave out
(the remainder); :func:`cross_moment` sums the series and puts the remainder on order N + 1
(exact at rho = 1 and rho = 0). Token correlation through element-wise functions (tokens.py)
and time correlation inside recurrent ops (recurrence.py) both use it.
"""

from __future__ import annotations

from collections.abc import Callable
from math import factorial

import numpy as np

from .gaussian import quadrature

ORDER = 8
_HZ, _HW = np.polynomial.hermite_e.hermegauss(64)
_HW = _HW / _HW.sum()
_CZ, _CW = quadrature(False)  # the composite rule, for functions with kinks


def _basis(z: np.ndarray) -> np.ndarray:
    """``He_n(z) / sqrt(n!)`` for n = 0..ORDER, stacked on a new first axis."""
    out = [np.ones_like(z), z.copy()]
    for n in range(1, ORDER):
        out.append(z * out[-1] - n * out[-2])
    return np.array([h / np.sqrt(factorial(n)) for n, h in enumerate(out)])


_HB = _basis(_HZ)  # [ORDER + 1, nodes]
_CB = _basis(_CZ)


def coefficients(fn: Callable[[np.ndarray], np.ndarray], mean, var, *, smooth: bool = True,
                 remainder: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(``c`` of shape ``[ORDER + 1, *shape]``, remainder ``Var f - sum_{n=1..N} c_n^2``) for
    ``z ~ N(mean, var)`` element-wise; ``smooth=False`` integrates with the composite rule
    (ReLU, clipping). ``remainder=False``: None in its place, not computed (a caller that
    reads the coefficients alone: the channel covariance's Mehler terms)."""
    mean, var = np.broadcast_arrays(np.asarray(mean, np.float64), np.asarray(var, np.float64))
    z, w, basis = (_HZ, _HW, _HB) if smooth else (_CZ, _CW, _CB)
    with np.errstate(all="ignore"):
        y = np.asarray(fn(mean[..., None] + np.sqrt(np.maximum(var, 0.0))[..., None] * z),
                       dtype=np.float64)
    y = np.where(np.isfinite(y), y, 0.0)
    c = np.moveaxis((y * w) @ basis.T, -1, 0)  # [ORDER + 1, *shape]
    if not remainder:
        return c, None
    second = (y * y) @ w
    return c, np.maximum(second - (c**2).sum(axis=0), 0.0)


def cross_moment(c_a, c_b, rho, rem_a=None, rem_b=None) -> np.ndarray:
    """``E[f(z_a) g(z_b)]`` from the coefficients of both (broadcast) and the correlation."""
    rho = np.clip(rho, -1.0, 1.0)
    out = c_a[0] * c_b[0]
    power = np.ones_like(rho)
    for n in range(1, c_a.shape[0]):
        power = power * rho
        out = out + c_a[n] * c_b[n] * power
    if rem_a is not None and rem_b is not None:
        out = out + np.sqrt(rem_a * rem_b) * power * rho
    return out


__all__ = ["ORDER", "at_axis", "coefficients", "cross_moment"]


def at_axis(fn: Callable[[np.ndarray], np.ndarray], axis: int, rank: int, n: int):
    """``fn`` evaluated on ``[n, nodes]`` arrays (the n indices along ``axis`` of a tensor of
    ``rank`` axes, as :func:`coefficients` lays them out) with the indices at ``axis`` and the
    nodes on a new leading axis, so that a constant of the chain that varies along ``axis``
    (DAC's snake ``x + sin^2(a_c x) / a_c``, ``a_c`` ``[1, C, 1]``) meets its own index;
    ValueError when the result varies along another axis too."""
    layout = [1] * rank
    layout[axis] = n

    def evaluated(t):
        t = np.asarray(t)
        u = np.moveaxis(t, -1, 0).reshape((t.shape[-1], *layout))
        v = np.asarray(fn(u))
        if v.shape != u.shape:
            raise ValueError("the function varies along another axis")
        return np.moveaxis(v.reshape(t.shape[-1], n), 0, -1)

    return evaluated
