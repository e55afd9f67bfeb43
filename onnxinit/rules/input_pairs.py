"""The third cumulants of a depthwise Conv's outputs that its input's spatial correlation adds.

:mod:`.pool_pairs` and :mod:`.pool_skewness` take the conv input ``x`` independent across
positions, so that ``k(z_p, z_p, z_q)`` (``z = sum_t W_t x_(s p + dil t)``) holds only the
input's own third cumulant ``k3`` at the inputs p and q share. But ``x = g(y)`` (a HardSwish
or ReLU of a Gaussian ``y`` whose positions are correlated, ``r(delta)``, the source's
correlation) has joint cumulants of two positions,

    kappa(delta) = k(x_u, x_u, x_(u + delta)) = Cov(h(y_u), g(y_(u + delta)))
                 = sum_(n >= 1) a_n(h) a_n(g) r(delta)^n / n!,   h = (g - E g)^2

(Mehler's formula with two functions, ``a_n(f) = E[f(m + s t) He_n(t)]``), and with them, for
indices of which exactly two coincide,

    T(d) = k(z_p, z_p, z_(p + d)) gains  sum_l B3(l) kappa(s d + dil l)
           + 2 sum_t W_t W_(t - e) V(t),   V(t) = sum_t' W_t' kappa(dil (t' - t)),

``B3(l) = sum_t W_t^2 W_(t + l)``, ``e = s d / dil`` (the second term only where that is a
whole lag). :func:`pair_terms` returns ``(T(d) + T(-d)) / 2`` per unit of the BatchNorm's
``a^3``, the same convention as ``pool_pairs.pair_sums``'s ``s3`` times ``k3``; at ``d = 0``
the terms of one position's own skewness, ``3 sum_l B3(l) kappa(dil l)``. Measured on
MobileNetV3-small at 224 (the HardSwish after the depthwise convs of blocks 6-10, 8 batches of
8): the measured ``sum_(q != p) k(z_p, z_p, z_q)`` per channel is 1.4-2.0x the independent
inputs' (correlation 0.91-0.96 over channels). Modelled: the Gaussian's correlation within the
offsets it stores (beyond, and the per-sample part it shares with every position, nothing),
an interior output (the zero padding's missing taps are not counted here), the third
cumulant only (the fourth's pairs are left independent), three distinct inputs' joint
cumulant (second order in ``r``) left out.
"""

from __future__ import annotations

import math

import numpy as np

from ..correlation import lag_matrix, recentred
from .gaussian import compose
from .kurtosis import NODES, WEIGHTS

ORDERS = 6  # Hermite terms of Mehler's series

_HERMITE = [np.ones_like(NODES), NODES.copy()]
for _n in range(2, ORDERS + 1):
    _HERMITE.append(NODES * _HERMITE[-1] - (_n - 1) * _HERMITE[-2])
# rows w He_n(t), n = 1..ORDERS: the coefficients of every channel as one matrix product
_WEIGHTED = np.stack([WEIGHTS * _HERMITE[n] / math.sqrt(math.factorial(n))
                      for n in range(1, ORDERS + 1)])


def joint_cumulants(mean: np.ndarray, std: np.ndarray, chain, rho: np.ndarray):
    """``(k3, k22, k31)`` of two positions of ``x = chain(y)`` at every offset delta,
    ``[C, *offsets]`` each: ``k(x_u, x_u, x_v)``, ``k(x_u, x_u, x_v, x_v)``, ``k(x_u, x_u, x_u,
    x_v)``, v = u + delta, for ``y`` of per-channel ``mean``, ``std`` ``[C]`` and correlation
    ``rho`` ``[C or 1, *offsets]``; 0 at delta = 0 (the input's own cumulants are the
    caller's). None where the chain is not finite."""
    fn = compose(chain)
    with np.errstate(all="ignore"):
        g = np.asarray(fn(mean[None, :] + std[None, :] * NODES[:, None]), np.float64)
    if not np.all(np.isfinite(g)):
        return None
    centred = g - WEIGHTS @ g
    sq = centred * centred
    nu = WEIGHTS @ sq
    # Hermite coefficients over sqrt(n!): Cov(F(y_u), G(y_v)) = sum_n a_n(F) a_n(G) r^n
    a_g, a_h, a_c = (_WEIGHTED @ f for f in (centred, sq - nu, sq * centred))
    c = mean.size
    n_axes = rho.ndim - 1
    r = np.broadcast_to(rho, (c,) + rho.shape[1:])
    cov_g = np.zeros(r.shape)
    out = [np.zeros(r.shape) for _ in range(3)]
    power = np.ones(r.shape)
    for n in range(ORDERS):
        power = power * r

        def term(a, b, n=n):
            return (a[n] * b[n]).reshape((-1,) + (1,) * n_axes) * power

        cov_g += term(a_g, a_g)
        out[0] += term(a_h, a_g)
        out[1] += term(a_h, a_h)
        out[2] += term(a_c, a_g)
    out[1] -= 2 * cov_g**2
    out[2] -= 3 * nu.reshape((-1,) + (1,) * n_axes) * cov_g
    centre = (slice(None), *((k - 1) // 2 for k in r.shape[1:]))
    for a in out:
        a[centre] = 0.0
    return tuple(out)


def pair_terms(weight: np.ndarray, strides, dilations, joint, radius):
    """Per unit ``a^3`` and ``a^4``, ``((T3(d) + T3(-d)) / 2, T4(d))`` (module docstring) per
    channel and offset ``|d_i| <= radius_i``, ``[C, *(2 radius + 1)]`` each, from the depthwise
    kernel ``weight`` ``[C, 1, *k]`` and the input's :func:`joint_cumulants` (zero beyond their
    offsets)."""
    w = np.asarray(weight, np.float64)[:, 0]
    c, kernel = w.shape[0], w.shape[1:]
    n = len(kernel)
    key = (w.tobytes(), tuple(strides), tuple(dilations), tuple(radius),
           tuple(a.tobytes() for a in joint))
    hit = _MEMO.get(key)
    if hit is not None:
        return hit
    taps = np.array(list(np.ndindex(*kernel)))  # [K, n]
    flat = w.reshape(c, -1)
    sq = flat * flat
    s, dl = np.asarray(strides), np.asarray(dilations)
    grid = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in radius], indexing="ij"),
                    axis=-1)  # [*D, n]
    reach = [int(s[a] * radius[a] + dl[a] * (kernel[a] - 1)) for a in range(n)]
    k3, k22, k31 = (recentred(a, 1, reach, 0.0) for a in joint)

    def at(field, offsets):  # field at integer input offsets [..., n]
        return field[(slice(None),) + tuple(offsets[..., a] + reach[a] for a in range(n))]

    b = (-1,) + (1,) * n
    t3 = np.zeros((c,) + grid.shape[:-1])
    t4 = np.zeros_like(t3)
    # every pair of taps (u of p's window, v of q's) by its lag v - u: B3(l), B4(l)
    lags = lag_matrix(tuple(kernel))
    b3 = (sq[:, :, None] * flat[:, None, :]).reshape(c, -1) @ lags
    b4 = (sq[:, :, None] * sq[:, None, :]).reshape(c, -1) @ lags
    for i, lag in enumerate(np.ndindex(*(2 * k - 1 for k in kernel))):
        where = grid * s + dl * (np.asarray(lag) - (np.asarray(kernel) - 1))
        t3 += b3[:, i].reshape(b) * at(k3, where)  # u = u', v
        t4 += b4[:, i].reshape(b) * at(k22, where)  # u = u', v = v'
    # V(t) = sum_t' W_t' kappa(dil (t' - t)): one index of a window paired with the others
    between = dl * (taps[None, :, :] - taps[:, None, :])  # [K, K, n]: taps t -> t'
    v3 = np.einsum("cj,cij->ci", flat, at(k3, between))
    v31 = np.einsum("cj,cij->ci", flat, at(k31, between))
    k22_between = at(k22, between)  # [C, K, K]
    index = {tuple(t): i for i, t in enumerate(taps)}
    for pos in np.ndindex(*grid.shape[:-1]):
        step = grid[pos] * s
        if np.any(step % dl):
            continue
        e = step // dl
        shared = [(i, index[tuple(t - e)]) for i, t in enumerate(taps) if tuple(t - e) in index]
        if not shared:
            continue
        i1, i2 = (np.array(a) for a in zip(*shared))  # tap i1 of p and i2 of q read one input
        at_pos = (slice(None),) + pos
        t3[at_pos] += 2 * (flat[:, i1] * flat[:, i2] * v3[:, i1]).sum(axis=1)
        # k31: three of the four indices on one shared input, the fourth in either window
        t4[at_pos] += 2 * (sq[:, i1] * flat[:, i2] * v31[:, i2]
                           + flat[:, i1] * sq[:, i2] * v31[:, i1]).sum(axis=1)
        # k22 across the windows: two shared inputs, each read by both (two pairings)
        pair = flat[:, i1] * flat[:, i2]
        t4[at_pos] += 2 * np.einsum("ca,cab,cb->c", pair, k22_between[:, i1][:, :, i1], pair)
    axes = tuple(range(1, n + 1))
    out = (0.5 * (t3 + np.flip(t3, axis=axes)), 0.5 * (t4 + np.flip(t4, axis=axes)))
    if len(_MEMO) > 256:
        _MEMO.clear()
    _MEMO[key] = out
    return out


_MEMO: dict = {}

__all__ = ["ORDERS", "joint_cumulants", "pair_terms"]
