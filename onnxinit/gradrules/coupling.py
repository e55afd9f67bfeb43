"""The dependence of attention's logit gradient on the queries and keys it multiplies.

``dQ = dS K`` and ``dK = dS^T Q`` with ``dS = P * (dP - sum_j P_.j dP_.j)`` and
``P = softmax(s Q K^T)``: P is largest at the keys most aligned with the query, so dS is not
independent of K and Q, and ``E[|dQ|^2]`` is above ``E[dS^2] E[K^2]`` (about 1.3x at a logit
variance of 1, 16 tokens). The factor is measured by Monte Carlo on the model the rules use
for the rest: Q, K with independent standard normal entries (T tokens, d features), ``s`` so
that the logits have the predicted variance, dP a part ``rho`` the queries share (a loss on
the mean over tokens) plus independent noise; the factor is the ratio of the second moments
with the same sample's K (Q) to those with another sample's (seeded).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

BUDGET = 1 << 21  # elements of Q K^T x d per call
MAX_TOKENS = 256


def _round(x: float, step: float) -> float:
    return round(x / step) * step


def coupling(logit_var: float, tokens: int, width: int, shared: float) -> tuple[float, float]:
    """(factor of E[dQ^2], factor of E[dK^2]) (module docstring); (1, 1) when out of range."""
    if tokens < 2 or tokens > MAX_TOKENS or width < 1 or not logit_var > 0:
        return 1.0, 1.0
    # rounded arguments: repeated layers share one draw
    return _coupling(_round(min(logit_var, 16.0), 0.01), tokens, width,
                     _round(min(max(shared, 0.0), 1.0), 0.05))


@lru_cache(maxsize=64)
def _coupling(logit_var: float, tokens: int, width: int, shared: float) -> tuple[float, float]:
    t, d = tokens, width
    n = max(8, BUDGET // (t * t * d))
    rng = np.random.default_rng([t, d, int(logit_var * 100), int(shared * 100)])
    q = rng.standard_normal((n, t, d))
    k = rng.standard_normal((n, t, d))
    z = np.sqrt(logit_var / d) * (q @ k.transpose(0, 2, 1))
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    e = np.sqrt(shared) * rng.standard_normal((n, 1, t)) + np.sqrt(1 - shared) * (
        rng.standard_normal((n, t, t)))
    ds = p * (e - (p * e).sum(axis=-1, keepdims=True))
    other_k, other_q = np.roll(k, 1, axis=0), np.roll(q, 1, axis=0)
    dst = ds.transpose(0, 2, 1)
    f_q = np.mean((ds @ k) ** 2) / np.mean((ds @ other_k) ** 2)
    f_k = np.mean((dst @ q) ** 2) / np.mean((dst @ other_q) ** 2)
    return float(f_q), float(f_k)
