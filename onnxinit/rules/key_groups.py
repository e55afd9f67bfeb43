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
and ``E[p]``, ``Var[p]`` are averaged over the draws (``softmax_rows.MC_DRAWS`` logits per node, at
least ``softmax_rows.MC_MIN`` draws per row, as the independent path; ``F e`` drawn once per group
of consecutive rows, each row scaling it by its own deviations). Used when the correlation is
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
# groups of rows with draws of their own (correlated_rows): the error of an average over rows
# whose draws are shared grows with the group's size. GPT-2's rescaled attention (1536 rows,
# 400 draws each, against 40,000): the rows' summed variance 1-3% off with one group for all,
# 0.3-0.9% with 64, 0.05-0.4% with 256 as with a group per row (0.03-0.5%), at 0.41 s against
# 1.25 s for a group per row; each element's own error (10% median) is the draws' in all
DRAW_GROUPS = 256
_GROUPS_PER_PRODUCT = 16  # groups whose draws are one matrix product (6,400 x n at 400 draws)
# draws per row for the rows' average covariance of p (probability_covariance): an average over
# many rows (a padded window's 1536), whose n^2 products per draw cost n times the exponentials
COVARIANCE_DRAWS = 64
_EXP_SAFE = 600.0  # |logit| below which exp needs no shift (exp(600) = 3.8e260, exp(-600) normal)


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


def _draw_groups(masked: np.ndarray) -> list[slice]:
    """Consecutive rows that share their draws: at least ``DRAW_GROUPS`` groups (each row
    alone when there are fewer rows)."""
    rows = masked.shape[0]
    size = -(-rows // DRAW_GROUPS)
    return [slice(start, min(start + size, rows)) for start in range(0, rows, size)]


def correlated_rows(rel: np.ndarray, var: np.ndarray, masked: np.ndarray, factor: np.ndarray,
                    rng, draws: int, minimum: int, weights: np.ndarray | None = None,
                    scales=None):
    """(E, Var) of softmax over rows [R, n] of jointly Gaussian logits ``rel + sqrt(var) (F e)``
    (masked elements: probability 0), ``max(minimum, draws // (R n))`` draws per row. With
    ``weights`` [R] (each row's share), also the probabilities' covariance across the keys
    averaged over the rows, ``sum_r w_r Cov_r(p_k, p_l)`` [n, n] (:func:`probability_covariance`).
    ``scales(rng, count)``: each draw's deviations times its own factor (a row's logit variance
    that differs from query to query: softmax.row_scales).

    The correlated keys ``F e`` are drawn once per group of consecutive rows (``_draw_groups``)
    and each row of the group scales them by its own standard deviations: every row's estimate
    is that of its own draws, as accurate as with draws of its own, while the errors of rows in
    one group are correlated (an average over many rows keeps the accuracy of independent rows
    when there are many groups: ``DRAW_GROUPS``). Each row evaluates its unmasked keys only (a
    causal mask's prefix is a view, no copy)."""
    rows, n = rel.shape
    count = max(minimum, draws // max(1, rows * n))
    sd = np.sqrt(np.maximum(var, 0.0))
    base = np.where(masked, 0.0, rel)
    ex, ex2 = np.zeros(rel.shape), np.zeros(rel.shape)
    joint = None if weights is None else np.zeros((n, n))
    with np.errstate(all="ignore"):
        groups = _draw_groups(masked)
        for first in range(0, len(groups), _GROUPS_PER_PRODUCT):
            batch = groups[first:first + _GROUPS_PER_PRODUCT]
            # one product for several groups: a small product per group ran OpenBLAS's
            # threads for 0.2 ms of work each, whose waits cost 5x the work on a busy machine
            correlated = rng.standard_normal((len(batch) * count, factor.shape[1])) @ factor.T
            if scales is not None:
                correlated *= scales(rng, len(batch) * count)[:, None]
            for j, group in enumerate(batch):
                shared = correlated[j * count:(j + 1) * count]
                peak = np.abs(shared).max(axis=0)
                for r in range(group.start, group.stop):
                    keys = np.flatnonzero(~masked[r])
                    if keys.size == 0:
                        continue
                    if keys[-1] - keys[0] == keys.size - 1:  # consecutive keys: a view
                        z = shared[:, keys[0]:keys[-1] + 1] * sd[r, keys]
                    else:
                        z = shared[:, keys] * sd[r, keys]
                    z += base[r, keys]
                    reach = sd[r, keys] * peak[keys]
                    # exp needs no shift when no logit can overflow and every draw's largest
                    # logit is a normal number's exponent (all draws' logits lie within +-reach)
                    if not (np.max(base[r, keys] + reach) < _EXP_SAFE and
                            np.max(base[r, keys] - reach) > -_EXP_SAFE):
                        z -= z.max(axis=1, keepdims=True)
                    np.exp(z, out=z)
                    weight = 1.0 / z.sum(axis=1)  # each draw's 1 / sum of its exponentials
                    ex[r, keys] = (weight / count) @ z
                    if joint is not None and weights[r] > 0:
                        p = z * weight[:, None]
                        e = ex[r, keys]
                        joint[np.ix_(keys, keys)] += weights[r] * (p.T @ p / count
                                                                   - np.outer(e, e))
                    z *= z
                    weight *= weight
                    ex2[r, keys] = (weight / count) @ z
    if joint is not None:
        return ex, np.maximum(ex2 - ex**2, 0.0), joint
    return ex, np.maximum(ex2 - ex**2, 0.0)


__all__ = ["correlated_rows", "correlation_factor"]
