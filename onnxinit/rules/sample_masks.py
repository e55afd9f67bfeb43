"""Independent sources of a sample's shared energy, carried by :mod:`.sample_energy` as
factors of their own: each per-sample gate every channel shares (a stochastic-depth keep mask
``[N, 1, 1, 1]``, any per-sample scale).

A tensor's relative per-sample energy is ``eps = eps_0 + sum_k eps_k``: ``eps_0`` the common
part (factors merged into it add as one scale), ``eps_k`` the part source k put in, with
``Var eps_k = eta_k`` and the mean offset that moves with it ``alpha_k eps_k`` (per channel).
The factors are independent, so ``eta = eta_0 + sum_k eta_k``, and a regression of the
offsets on the whole ``eps`` is ``alpha = sum_k alpha_k eta_k / eta``.

Why factors: a sample's drop of a residual branch changes its energy independently of the
energies its skip and its branch already share, so (1) at a residual sum the mask's part adds
in quadrature with the rest, not as one common scale, and (2) the mean offsets the skip's
energy drives do not move with the mask's energy, so a regression on the whole ``eps``
dilutes them. Measured on EfficientNet-B0 (112x112, 16 batches of 8), the mask's energy
carried as one common scale and through the chains' linear rule: the offsets' regression
1.2-1.5x the measured at the sums after the masks and 7.7x after the first one, eta 1.7-2x at
stage 6's sums, the pools there up to 1.4-2x; as factors, with a mask's two-point law exact
through each chain: offsets 0.9-1.1x, eta 0.7-0.9x at every sum, pools 0.73-1.06x (0.47-0.87x
without the masks' energy).
"""

from __future__ import annotations

import math

import numpy as np

from ..moments import Moments
from .energy_fields import chain_values, channel_var, source_var

Factors = dict  # gate tensor -> (eta_k, alpha_k [C], p_k: the low point's probability or None)
_FLOOR = 0.01  # the least relative energy of a sample (a dropped branch leaves its skip's)


def gate_moments(mean: float, var: float, zero_atom: bool) -> tuple[float, ...]:
    """``(E g, E g^2, E g^3, E g^4)`` of a per-sample gate: a keep mask ``g in {0, c}``
    (``zero_atom``: ``c = E g^2 / E g``, ``P(g = c) = E g / c``, ``E g^n = P c^n``), else a
    Gaussian of that mean and variance."""
    m1, m2 = mean, var + mean * mean
    if zero_atom and m1 > 0:
        c = m2 / m1
        q = m1 / c
        return m1, m2, q * c**3, q * c**4
    return m1, m2, m1**3 + 3 * m1 * var, m1**4 + 6 * m1 * m1 * var + 3 * var * var


def gate_factor(moments, eta_x: float, mean_x: np.ndarray) -> tuple[float, np.ndarray, float]:
    """(eta_g, alpha_g [C], r) of ``y = g x``, g a per-sample gate every channel shares (with
    ``p = 1 - E g^2 / (c E g)`` its factor is a two-point law, :func:`points`).

    ``1 + eps_y = (g^2 / E g^2) (1 + eps_x)``, so with ``r = E g^4 / (E g^2)^2`` the gate's
    factor has ``eta_g = (r - 1) (1 + eta_x)`` (the product with x's own energy included) and
    x's factors keep theirs; the gate moves a channel of mean ``mu_c`` by ``(g - E g) mu_c``,
    ``alpha_g = mu_c (E g^3 - E g E g^2) / (E g^2 (r - 1))`` (0 for a centred channel)."""
    m1, m2, m3, m4 = moments
    r = m4 / (m2 * m2)
    if not r > 1:
        return 0.0, np.zeros_like(mean_x), 1.0
    alpha = mean_x * (m3 - m1 * m2) / (m2 * (r - 1))
    return (r - 1) * (1 + eta_x), alpha, r


def points(eta: float, p: float) -> tuple[np.ndarray, np.ndarray]:
    """(eps [2], probabilities [2]) of a two-point factor of variance eta whose low point has
    probability p (a keep mask's drop): ``eps = -sqrt(eta q / p)``, ``sqrt(eta p / q)``,
    mean 0; the low point floored where the energy would fall below 0."""
    q = 1.0 - p
    eps = np.array([max(-math.sqrt(eta * q / p), _FLOOR - 1.0), math.sqrt(eta * p / q)])
    return eps, np.array([p, q])


def _at_points(m: Moments, shape, z: Moments, eta: float, alpha_z: np.ndarray, p: float):
    """(probabilities [2], means [2, C], variances [2, C]) of m's chain at the two points
    (:func:`chain_factor`); None where f is not finite."""
    eps, prob = points(eta, p)
    shift = alpha_z * np.sqrt(np.maximum(source_var(m, shape), 1e-300)
                              / np.maximum(channel_var(z, shape[1]), 1e-300))
    means, variances = [], []
    for e in eps:
        got = chain_values(m, shape, 1.0 + e, shift * e)
        if got is None:
            return None
        y, w = got
        means.append(w @ y)
        variances.append(w @ (y - means[-1]) ** 2)
    return prob, np.stack(means), np.stack(variances)


def chain_factor(m: Moments, shape, z: Moments, eta: float, alpha_z: np.ndarray, p: float):
    """(eta, alpha [C]) of a two-point factor through the element-wise chain ``f`` of m's
    source Gaussian ``N(mu, s^2)`` (z: the tensor the chain starts from, alpha_z in its units),
    exact at both points: ``M_i = E f(mu + a alpha_z eps_i + s sqrt(1 + eps_i) t)``, ``V_i``
    likewise the variance (``a = s / sd(z)``); ``eps'_i = V_i / (p V_0 + q V_1) - 1``
    averaged over channels, ``eta' = p q (eps'_1 - eps'_0)^2``, ``alpha' = (M_1 - M_0) /
    (eps'_1 - eps'_0)``. The linear rule (``beta^2 eta``) assumes small eps; a dropped branch
    is not small, and the low point's mean offset is not in its energy (SiLU of a two-point
    scale: beta^2 = 1.21, exact 1.04 at eta 0.044, 0.94 at 0.086). None where f is not
    finite."""
    found = _at_points(m, shape, z, eta, alpha_z, p)
    if found is None:
        return None
    prob, means, variances = found
    energy = prob @ variances
    spread = float(np.mean((variances[1] - variances[0]) / np.where(energy > 0, energy, 1.0)))
    if not spread > 0:
        return None
    return prob[0] * prob[1] * spread**2, (means[1] - means[0]) / spread


def pooled_factor(m: Moments, shape, z: Moments, eta: float, alpha_z: np.ndarray, p: float):
    """``sqrt(p q) (M_1 - M_0)`` per channel of a two-point factor at a global pool of
    ``f(z)`` (:func:`chain_factor`'s ``M_i``): its square is ``Var_eps E_t f``, its outer
    product the pooled channels' covariance; None where f is not finite."""
    found = _at_points(m, shape, z, eta, alpha_z, p)
    if found is None:
        return None
    prob, means, _ = found
    return math.sqrt(prob[0] * prob[1]) * (means[1] - means[0])


def sum_factors(a: Factors, b: Factors, share: float, minus: bool = False) -> Factors:
    """The factors of ``a + b`` (``a - b``), ``share`` a's part of the sum's variance: per
    factor the loadings add, ``sqrt(eta) = w sqrt(eta_a) + (1 - w) sqrt(eta_b)``, and so do the
    offsets, ``alpha = (alpha_a sqrt(eta_a) +- alpha_b sqrt(eta_b)) / sqrt(eta)``."""
    out = {}
    for key in dict.fromkeys([*a, *b]):  # in order: a set's order follows the string hash
        ea, aa, p = a.get(key, (0.0, 0.0, None))
        eb, ab, p = b.get(key, (0.0, 0.0, p))
        la, lb = math.sqrt(ea), math.sqrt(eb)
        load = share * la + (1 - share) * lb
        if load > 0:
            out[key] = (load * load, (aa * la + (-ab if minus else ab) * lb) / load, p)
    return out


def concat_factors(parts: list[tuple[int, Factors]]) -> Factors:
    """The factors of a concatenation over channels of ``(channels, factors)`` parts: loadings
    weighted by the channel shares, offsets concatenated (in the whole's eps units)."""
    total = sum(size for size, _ in parts)
    keys = dict.fromkeys(key for _, f in parts for key in f)  # in order (not a set's)
    out = {}
    for key in keys:
        loads = [math.sqrt(f[key][0]) if key in f else 0.0 for _, f in parts]
        load = sum(size / total * la for (size, _), la in zip(parts, loads))
        if load <= 0:
            continue
        alpha = [np.broadcast_to(f[key][1], (size,)) * la / load if key in f else np.zeros(size)
                 for (size, f), la in zip(parts, loads)]
        p = next(f[key][2] for _, f in parts if key in f)
        out[key] = (load * load, np.concatenate(alpha), p)
    return out


def merge_smallest(eta0: float, alpha0: np.ndarray, factors: Factors, keep: int):
    """(eta_0, alpha_0, factors) with all but the ``keep`` largest factors merged into the
    common part: ``eta_0 + sum e``, offsets by :func:`regression` (at a later sum the common
    part adds as one scale: correlated, where the merged ones are not)."""
    if len(factors) <= keep:
        return eta0, alpha0.copy(), factors
    order = sorted(factors, key=lambda k: -factors[k][0])
    merged = {k: factors[k] for k in order[keep:]}
    eta, alpha = regression(eta0, alpha0, merged)
    return eta, alpha, {k: f for k, f in factors.items() if k not in merged}


def regression(eta0: float, alpha0: np.ndarray, factors: Factors) -> tuple[float, np.ndarray]:
    """(eta, alpha) of the whole per-sample energy: ``eta = eta_0 + sum_k eta_k``, ``alpha =
    (alpha_0 eta_0 + sum_k alpha_k eta_k) / eta`` (the offsets' regression on the whole eps)."""
    eta = eta0 + sum(f[0] for f in factors.values())
    if eta <= 0:
        return 0.0, np.zeros_like(alpha0)
    alpha = alpha0 * eta0 + sum((f[1] * f[0] for f in factors.values()), np.zeros_like(alpha0))
    return eta, alpha / eta


__all__ = ["Factors", "chain_factor", "concat_factors", "gate_factor", "gate_moments",
           "merge_smallest", "points", "pooled_factor", "regression", "sum_factors"]
