"""Softmax rows whose logits are correlated unevenly across the keys (Monte Carlo).

The closed form and the independent Monte Carlo of ``softmax.py`` take a row's logits as
independent once the component common to the whole row is removed (a softmax ignores it). That
leaves out a component shared by only some of the keys. In a zero-padded window (Swin V2's last
stages, where the map is smaller than the window) the padded keys are exact zeros: their cosine
logits are constants, while the real keys share ``q . mean(k)``, the query against the keys'
common direction (their per-feature means). That shared part moves the real keys together
against the padding, and it is 40-70% of their logit variance: taken as independent, the real
keys' probabilities read 2x their measured variance (3-5x on the whole Softmax output).

With the logits' token covariance along the keys (``Moments.tokens``: ``Cov(a_k, a_l) = nu
cov[k, l]``, from Q K^T, ``attention._logit_field``), each row is sampled jointly::

    a_k = m_rk + s_rk (F e)_k,   e ~ N(0, I),   F F^T = R,   R_kl = cov_kl / sqrt(cov_kk cov_ll)

(``s_rk^2`` the row's variance of key k; keys of zero variance, the padding, are constants),
and ``E[p]``, ``Var[p]`` are averaged over the draws (``softmax._MC_DRAWS`` logits per node, at
least ``softmax._MC_MIN`` draws per row, as the independent path). Used when the correlation is
uneven: some keys are constants while the others share a mean correlation above
``SHARED_MIN``, or the off-diagonal correlations spread by more than ``SPREAD_MIN`` (std).
Otherwise the row-common subtraction of ``softmax.py`` is what the covariance says.

Not modelled: logits that are not Gaussian (a cosine is bounded: Beta-distributed for isotropic
rows, a lighter tail than the Gaussian; 1.14x on a row of 64 independent keys of dimension 32).
"""

from __future__ import annotations

import numpy as np

SHARED_MIN = 0.05  # mean correlation of the varying keys, when some keys are constants
SPREAD_MIN = 0.1  # std of the off-diagonal correlations among the varying keys
_SUPPORT = 1e-12  # a key whose variance is below this share of the largest is a constant


def correlation_factor(cov: np.ndarray) -> np.ndarray | None:
    """F [n, n] with ``F F^T`` the keys' correlation (zero rows for constant keys) when the
    covariance is uneven (module docstring), else None."""
    d = np.diag(cov)
    top = float(d.max()) if d.size else 0.0
    if top <= 0:
        return None
    support = d > _SUPPORT * top
    k = int(support.sum())
    if k < 2:
        return None
    sd = np.sqrt(np.where(support, d, 1.0))
    corr = np.where(np.outer(support, support), cov / np.outer(sd, sd), 0.0)
    inner = corr[np.ix_(support, support)]
    off = inner[~np.eye(k, dtype=bool)]
    uneven = (not support.all() and float(off.mean()) > SHARED_MIN) or float(off.std()) > SPREAD_MIN
    if not uneven:
        return None
    w, v = np.linalg.eigh(inner)
    factor = np.zeros((cov.shape[0], k))
    factor[support] = v * np.sqrt(np.maximum(w, 0.0))
    return factor


def correlated_rows(rel: np.ndarray, var: np.ndarray, masked: np.ndarray, factor: np.ndarray,
                    rng, draws: int, minimum: int) -> tuple[np.ndarray, np.ndarray]:
    """(E, Var) of softmax over rows [R, n] of jointly Gaussian logits ``rel + sqrt(var) (F e)``
    (masked elements: probability 0)."""
    rows, n = rel.shape
    count = max(minimum, draws // max(1, rows * n))
    sd = np.sqrt(np.maximum(var, 0.0))
    base = np.where(masked, 0.0, rel)
    ex, ex2 = np.zeros(rel.shape), np.zeros(rel.shape)
    with np.errstate(all="ignore"):
        for r in range(rows):
            z = base[r] + sd[r] * (rng.standard_normal((count, factor.shape[1])) @ factor.T)
            if masked[r].any():
                z = np.where(masked[r], -np.inf, z)
            z = z - z.max(axis=1, keepdims=True)
            y = np.exp(z)
            y /= y.sum(axis=1, keepdims=True)
            ex[r], ex2[r] = y.mean(axis=0), (y * y).mean(axis=0)
    return ex, np.maximum(ex2 - ex**2, 0.0)


__all__ = ["correlated_rows", "correlation_factor"]
