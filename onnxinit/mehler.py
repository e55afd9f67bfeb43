"""Hermite amplitudes of a function of a Gaussian and Mehler's formula: how an element-wise
function maps the correlation of two jointly Gaussian values (the spatial correlation of
:mod:`onnxinit.correlation` through an activation).

``a_n = E[f(mean + std z) He_n(z)]`` (n = 1..8, z standard normal) in closed form for LeakyRelu
and ReLU, by blocked quadrature otherwise; ``Cov(f(z), f(z')) = sum_n a_n^2 rho^n / n!`` for
pairs of correlation rho.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from . import special
from .kept_cdf import kept_density, ndtr_kept

_HERMITE = 8  # terms of Mehler's expansion
_NODE_BLOCK = 1 << 21  # function values per matrix product of hermite_amplitudes
_CACHE_BLOCK = 1 << 17  # function values per evaluation of the function there
_FACTORIALS = np.array([float(math.factorial(n)) for n in range(1, _HERMITE + 1)])  # n!


def leaky_hermite_amplitudes(slope: float, mean, std) -> np.ndarray:
    """a_n = E[f(mean + std z) He_n(z)], n = 1..8, for f = LeakyRelu (ReLU: slope 0), in
    closed form: with alpha = -mean/std the kink in z, ``a_1 = std (Phi(-alpha) + slope
    Phi(alpha))`` and ``a_n = (1 - slope) std He_{n-2}(alpha) phi(alpha)`` for n >= 2
    (Stein: E[g He_n] = E[g^(n)]). ``[8, *index shape]``."""
    mean, std = np.broadcast_arrays(np.asarray(mean, np.float64), np.asarray(std, np.float64))
    return _leaky_amplitudes(slope, std, *_kink(mean, std))


_CLASS_BLOCK = 1 << 13  # cells per block of leaky_hermite_class_means (8 rows in cache)


def leaky_hermite_class_means(slope: float, mean, std, weights: np.ndarray) -> np.ndarray:
    """``sum_k weights_k a_n(cell c, k)`` per channel, ``[8, C]``: the amplitudes of
    :func:`leaky_hermite_amplitudes` on ``[1, C, K_0, ...]`` cells averaged over the position
    classes (``weights`` ``[K_0, ...]``), a block of channels at a time so that the eight rows
    stay in cache; every value and every channel's sum as on the whole array (the kink, its
    density and CDF are computed on the whole, the CDF kept from the ReLU's moments)."""
    mean, std = np.broadcast_arrays(np.asarray(mean, np.float64), np.asarray(std, np.float64))
    a0, phi, cdf = _kink(mean, std)
    channels = mean.shape[1]
    step = max(1, _CLASS_BLOCK // max(1, int(np.prod(mean.shape[2:]))))
    out = np.empty((_HERMITE, channels))
    for c in range(0, channels, step):
        block = (slice(None), slice(c, c + step))
        amp = _leaky_amplitudes(slope, std[block], a0[block], phi[block], cdf[block])
        out[:, c:c + step] = (amp[:, 0] * weights).reshape(_HERMITE, amp.shape[2], -1).sum(
            axis=-1)
    return out


def _kink(mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(alpha, phi(alpha), Phi(-alpha)) of the kink alpha = -mean/std (0, 0 and the side's
    CDF where alpha is infinite: a constant)."""
    alpha = None
    if std.ndim and std.size and (std > 0).all():  # the usual case, in fewer passes
        with np.errstate(over="ignore"):
            ratio = mean / std  # -alpha, bit for bit: (-m) / s = -(m / s)
        if np.isfinite(ratio).all():
            cdf = ndtr_kept(ratio)  # the ReLU's moments asked for it (relu_parts)
            alpha = a0 = np.negative(ratio)
            phi = kept_density(cdf)  # and computed phi(ratio), the same bits as below
            if phi is None:
                phi = np.exp(-0.5 * a0**2) / np.sqrt(2 * np.pi)
    if alpha is None:
        with np.errstate(divide="ignore", invalid="ignore"):
            # a constant (std 0) has every amplitude 0; its kink sits at +-inf, never at 0 * inf
            alpha = np.where(std > 0, -mean / np.where(std > 0, std, 1.0),
                             np.where(mean > 0, -np.inf, np.inf))
        finite = np.isfinite(alpha)
        a0 = np.where(finite, alpha, 0.0)
        phi = np.where(finite, np.exp(-0.5 * a0**2) / np.sqrt(2 * np.pi), 0.0)
        cdf = special.ndtr(-alpha)
    return a0, phi, cdf


def _leaky_amplitudes(slope: float, std: np.ndarray, a0: np.ndarray, phi: np.ndarray,
                      cdf: np.ndarray) -> np.ndarray:
    out = np.empty((_HERMITE,) + a0.shape)
    if slope == 0:  # cdf + 0 (1 - cdf) is cdf; 1 std is std
        np.multiply(std, cdf, out=out[0, ...])
        scaled = std
    else:
        out[0] = std * (cdf + slope * (1 - cdf))
        scaled = (1 - slope) * std
    np.multiply(scaled, phi, out=out[1, ...])  # He_0 = 1
    he_prev, he = np.ones_like(a0), a0.copy()  # He_0, He_1
    step = np.empty_like(a0)
    for k in range(3, _HERMITE + 1):  # a_k = (1 - slope) std He_{k-2} phi
        np.multiply(scaled, he, out=out[k - 1, ...])
        out[k - 1, ...] *= phi
        if k < _HERMITE:  # He_{k-1} = alpha He_{k-2} - (k - 2) He_{k-3}
            np.multiply(he_prev, k - 2, out=step)
            np.multiply(a0, he, out=he_prev)
            he_prev -= step
            he_prev, he = he, he_prev
    return out


def piecewise_hermite_amplitudes(pieces, mean, std) -> np.ndarray:
    """a_n = E[f(mean + std z) He_n(z)], n = 1..8, in closed form for f a piecewise polynomial
    of degree <= 2 (``pieces``: ``(lo, hi, (c0, c1, c2))`` covering the real line, as
    ``rules.gaussian.piecewise_closed``; HardSwish, HardSigmoid, Clip...). On a piece, in z,
    f - f(mean) = d0 + d1 z + d2 z^2 between alpha = (lo - mean)/std and beta, and with
    z He_n = He_{n+1} + n He_{n-1}, z^2 He_n = He_{n+2} + (2n+1) He_n + n(n-1) He_{n-2}::

        a_n = sum_pieces d0 J_n + d1 (J_{n+1} + n J_{n-1}) + d2 (J_{n+2} + (2n+1) J_n
                                                                   + n(n-1) J_{n-2})

    with J_k = int_alpha^beta He_k phi = He_{k-1}(alpha) phi(alpha) - He_{k-1}(beta) phi(beta)
    (k >= 1), J_0 = Phi(beta) - Phi(alpha). Subtracting f(mean) changes no a_n (n >= 1: the
    J_n of the pieces sum to E[He_n] = 0) but keeps the terms small. A point mass (std 0)
    has every amplitude 0. ``[8, *shape]``."""
    mean, std = np.broadcast_arrays(np.asarray(mean, np.float64), np.asarray(std, np.float64))
    point = std == 0
    s1 = np.where(point, 1.0, std)
    shift = sum(np.where((mean >= lo) & (mean < hi), c0 + c1 * mean + c2 * mean * mean, 0.0)
                for lo, hi, (c0, c1, c2) in pieces)
    out = np.zeros((_HERMITE,) + mean.shape)
    kept: dict = {}  # the bounds' values, shared by the pieces that meet there
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for lo, hi, (c0, c1, c2) in pieces:
            d0 = c0 + c1 * mean + c2 * mean * mean - shift
            d1 = (c1 + 2 * c2 * mean) * s1
            d2 = c2 * s1 * s1
            j = _hermite_integrals((lo - mean) / s1, (hi - mean) / s1, _HERMITE + 2, kept,
                                   (bound_key(lo), bound_key(hi)))
            for n in range(1, _HERMITE + 1):
                term = d1 * (j[n + 1] + n * j[n - 1])
                term += d0 * j[n]
                low = (2 * n + 1) * j[n] + (n * (n - 1) * j[n - 2] if n >= 2 else 0.0)
                term += d2 * (j[n + 2] + low)
                out[n - 1] += term
    return np.where(point, 0.0, out)


def _hermite_integrals(lo, hi, top: int, kept: dict | None = None,
                       keys: tuple = (None, None)) -> list[np.ndarray]:
    """``J_k = int_lo^hi He_k(z) phi(z) dz`` for k = 0..top, infinite bounds allowed:
    J_0 = Phi(hi) - Phi(lo) (from the nearer tail), J_k = g_{k-1}(lo) - g_{k-1}(hi) with
    g_j = He_j phi, 0 at +-inf and where phi underflows. ``kept`` (a dict for one
    :func:`piecewise_hermite_amplitudes`): each bound's values under its key in ``keys`` (a
    piece's upper bound is the next piece's lower one: the same array, computed once)."""
    g_lo, (cdf_lo, cdf_lo_neg) = _bound_terms(lo, top, kept, keys[0])
    g_hi, (cdf_hi, cdf_hi_neg) = _bound_terms(hi, top, kept, keys[1])
    upper = lo > 0
    j0 = np.where(upper, cdf_lo_neg - cdf_hi_neg, cdf_hi - cdf_lo)
    return [j0] + [a - b for a, b in zip(g_lo, g_hi)]


def _bound_terms(t, top: int, kept: dict | None, key):
    """([He_j(t) phi(t) for j = 0..top-1], (Phi(t), Phi(-t))) of one bound of
    :func:`_hermite_integrals`, kept in ``kept`` under ``key`` (None: not kept)."""
    if kept is not None and key is not None and (key, top) in kept:
        return kept[key, top]
    phi = np.exp(-0.5 * np.where(np.isfinite(t), t, 0.0) ** 2) / np.sqrt(2 * np.pi)
    live = np.isfinite(t) & (phi > 0)
    whole = live.any()  # else every value at +-inf or past phi's underflow: one value a term
    phi = np.where(live, phi, 0.0) if whole else np.zeros(())
    z = np.where(live, t, 0.0) if whole else np.zeros(())
    he_prev, he, g = np.ones_like(z), z, [phi]
    for j in range(1, top):
        g.append(he * phi)
        he_prev, he = he, z * he - j * he_prev
    if not whole:  # the same operations on one value (zeros' signs included), spread out
        g = [np.full(np.shape(t), v) for v in g]
    out = (g, (special.ndtr(t), special.ndtr(-t)))
    if kept is not None and key is not None:
        kept[key, top] = out
    return out


def bound_key(bound):
    """The key under which equal scalar bounds of a piecewise function share their values
    (:func:`_hermite_integrals`, ``rules.gaussian._partial_moments``; the sign of a zero kept
    apart: it reaches the odd terms); None for an array or NaN."""
    if np.ndim(bound) != 0:
        return None
    value = float(bound)
    return None if math.isnan(value) else (value, math.copysign(1.0, value))


def hermite_amplitudes(fn: Callable, mean, std, nodes, weights) -> np.ndarray:
    """a_n = E[f(mean + std z) He_n(z)] for n = 1..8 by quadrature, per tracked index
    (``[8, *index shape]``): ``sum_i w_i He_n(z_i) (f_i - E[f])``, f's non-finite values taken
    as 0. Evaluated a block of nodes at a time (at most ``_NODE_BLOCK`` values), the eight sums
    as one matrix product ``[8, nodes] @ [nodes, indices]``; ``E[f]`` is subtracted after the
    product, from values already shifted by ``f(mean)`` so that the cancellation is as small
    as when centring first."""
    shape = np.broadcast_shapes(np.shape(mean), np.shape(std))
    mean = np.broadcast_to(np.asarray(mean, np.float64), shape)
    std = np.broadcast_to(np.asarray(std, np.float64), shape)
    he = np.empty((_HERMITE, nodes.size))  # He_n(z_i), n = 1..8
    he_prev, h = np.ones_like(nodes), nodes
    for k in range(1, _HERMITE + 1):
        he[k - 1] = h
        he_prev, h = h, nodes * h - k * he_prev
    hw = he * weights
    with np.errstate(all="ignore"):
        shift = np.asarray(fn(mean[None]), dtype=np.float64)[0]
        shift = np.where(np.isfinite(shift), shift, 0.0)
        # with positive weights, a non-finite value of f makes its index's centre sum
        # non-finite: the values are checked only then (the check is a fifth of the work)
        if np.all(weights > 0):
            acc, centre = _weighted_sums(fn, mean, std, shift, nodes, weights, hw, False)
            if not np.isfinite(centre).all():
                acc, centre = _weighted_sums(fn, mean, std, shift, nodes, weights, hw, True)
        else:
            acc, centre = _weighted_sums(fn, mean, std, shift, nodes, weights, hw, True)
    # sum_i hw_i (f_i - E[f]) with E[f] = shift * sum(w) + centre
    offset = centre + shift.reshape(-1) * (weights.sum() - 1.0)
    acc -= np.outer(hw.sum(axis=1), offset)
    return acc.reshape((_HERMITE,) + shift.shape)


def _weighted_sums(fn, mean, std, shift, nodes, weights, hw, check: bool):
    """(``hw @ (f - shift)``, ``weights @ (f - shift)``) over the nodes, f's non-finite values
    taken as 0 when ``check`` (else they propagate)."""
    rank_pad = (1,) * mean.ndim
    out_shape = shift.shape
    cells = int(np.prod(out_shape))
    step = max(1, _NODE_BLOCK // max(1, cells))
    # the function is evaluated a few nodes at a time (``_CACHE_BLOCK`` values: its
    # temporaries stay in cache; a whole block's are tens of MB) into the block's matrix
    sub = max(1, _CACHE_BLOCK // max(1, cells))
    flat_shift = shift.reshape(1, -1)
    acc = np.zeros((_HERMITE, cells))
    centre = np.zeros(cells)  # sum_i w_i (f_i - shift)
    for i in range(0, nodes.size, step):
        count = min(step, nodes.size - i)
        values = np.empty((count, cells))
        for j in range(0, count, sub):
            z = nodes[i + j:i + min(j + sub, count)].reshape((-1,) + rank_pad)
            x = std * z
            x += mean
            f = np.asarray(fn(x), dtype=np.float64)
            f = np.broadcast_to(f, (z.shape[0],) + out_shape).reshape(z.shape[0], -1)
            if check:
                finite = np.isfinite(f)
                if not finite.all():
                    f = np.where(finite, f, 0.0)
            np.subtract(f, flat_shift, out=values[j:j + z.shape[0]])
        acc += hw[:, i:i + count] @ values
        centre += weights[i:i + count] @ values
    return acc, centre


def mehler(amplitudes: np.ndarray, variance: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """Mehler's formula: ``Cov(f(z), f(z')) = sum_n a_n^2 rho^n / n!`` for standard-normal
    pairs of correlation rho, divided by f's variance (per channel): the output correlation.
    ``amplitudes`` ``[8, C]`` (averaged over position classes when positions differ),
    ``variance`` ``[C]`` (within a position), rho ``[C, ...]``."""
    c = amplitudes * amplitudes / _FACTORIALS[:len(amplitudes)].reshape(
        (-1,) + (1,) * (amplitudes.ndim - 1))
    c = c.reshape(c.shape[:2] + (1,) * (rho.ndim - 1))
    v = variance.reshape((-1,) + (1,) * (rho.ndim - 1))
    out = np.zeros(np.broadcast_shapes(rho.shape, v.shape))
    power, term = np.ones_like(out), np.empty_like(out)
    for k in range(c.shape[0]):
        power *= rho
        np.multiply(c[k], power, out=term)
        out += term
    return np.clip(np.where(v > 0, out / np.where(v > 0, v, 1.0), rho), -1.0, 1.0)


__all__ = ["bound_key", "hermite_amplitudes", "leaky_hermite_amplitudes", "mehler",
           "piecewise_hermite_amplitudes"]
