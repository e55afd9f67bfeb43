"""The covariance of the maxima of two overlapping max-pool windows (they share some of their
taps): what :mod:`.max_windows` adds to a max pool's spatial correlation."""

from __future__ import annotations

import numpy as np

from .. import special
from .context import RuleError
from .maxima import SPAN, factor_rule

_SHARED_CELLS = 256  # cells of the standardised tap value on [-SPAN, SPAN]


def shared_taps_covariance(mean, std, fn, taps: int, shared, rho):
    """``Cov(f(M_A), f(M_B))`` of the maxima of two windows of ``taps`` taps that share
    ``shared[i]`` of them (overlapping max-pool windows), the taps equicorrelated at ``rho`` by
    one common factor w and independent given it (:func:`max_of_correlated_gaussians`); only
    the covariance within each w, ``E_w[Cov(f(M_A), f(M_B) | w)]``: the factor's own share
    is the caller's (the linearised window correlation). Given w, with S the maximum of the
    shared taps and U, U' of each window's own ``taps - s``::

        f(M_A) = f(max(S, U)),  h(t) = E_U[f(max(t, U))]
        E[f(M_A) f(M_B) | w] = E_S[h(S)^2]   (U, U', S independent)
        Cov(. | w) = Var_S[h(S)]

    on ``_SHARED_CELLS`` cells of the standardised value (S and U at a cell's midpoint; U
    within S's own cell counted below it). ``mean``, ``std``, ``rho``: ``[*P]`` (one tap
    Gaussian per problem, laid out at the tensor's rank so that f's per-channel constants
    broadcast); returns ``[len(shared), *P]``."""
    mean, std, rho = np.broadcast_arrays(np.asarray(mean, np.float64),
                                         np.asarray(std, np.float64),
                                         np.clip(np.asarray(rho, np.float64), 0.0, 1.0))
    if np.any(rho > 0):
        factor_z, factor_w = factor_rule(rho)
    else:
        factor_z, factor_w = np.zeros(1), np.ones(1)
    edges = np.linspace(-SPAN, SPAN, _SHARED_CELLS + 1)
    mids = 0.5 * (edges[1:] + edges[:-1]).reshape((-1,) + (1,) * mean.ndim)
    phi = special.ndtr(edges).reshape((-1,) + (1,) * mean.ndim)
    out = np.zeros((len(shared),) + mean.shape)
    for z, weight in zip(factor_z, factor_w):
        centre = mean + std * np.sqrt(rho) * z
        with np.errstate(all="ignore"):
            values = np.asarray(fn(centre + std * np.sqrt(1.0 - rho) * mids), np.float64)
        values = np.broadcast_to(values, (_SHARED_CELLS,) + mean.shape)
        for i, s in enumerate(shared):
            f_u = phi ** (taps - s)
            f_u[-1] = 1.0
            d_u = np.diff(f_u, axis=0)
            d_u[0] += f_u[0]
            above = np.cumsum((values * d_u)[::-1], axis=0)[::-1]  # U in cell j >= k
            h = values * f_u[1:] + above - values * d_u  # U below S's cell end, or above it
            f_s = phi**s
            f_s[-1] = 1.0
            d_s = np.diff(f_s, axis=0)
            d_s[0] += f_s[0]
            e_h = (d_s * h).sum(axis=0)
            out[i] += weight * np.maximum((d_s * h * h).sum(axis=0) - e_h**2, 0.0)
    if not np.all(np.isfinite(out)):
        raise RuleError("the input distribution is not finite")
    return out


__all__ = ["shared_taps_covariance"]
