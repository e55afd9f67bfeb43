"""Leaves of the joint draws (:mod:`.joint_samples`, :mod:`.unrolled_draws`) drawn with their
token field's correlation across tokens.

A leaf is drawn element by element (independent elements, as every rule takes them). Where the
leaf carries a token field (``moments.Tokens``: the residual stream after a recurrent or
attention layer, whose tokens share part of their value) and its draw holds every token of a
sample, the standard normals are correlated across the tokens instead:

    z[:, t, d] = sum_s L[t, s] e[:, s, d],   L L^T = R,   R[s, t] = cov[s, t] / sqrt(cov[s, s] cov[t, t])

so that the region downstream (RWKV's WKV recurrence over the 32 tokens of layer 1, whose keys
and values are projections of the normalised stream) sees ``Cov(x_s, x_t)`` as the field says.
The per-element variance is the Moments' own (a correlation field), or ``nu_d cov[t, t]`` (a
covariance field: the per-token profile on its diagonal). R is made positive semi-definite by
clipping its eigenvalues at 0 (its rows renormalised to unit variance).
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from .token_field import is_correlation, token_axes


def leaf_draws(seed: int, name: str, m: Moments, grid: tuple[int, ...], mean, var, src,
               samples: int) -> np.ndarray:
    """``samples`` draws ``[samples, *grid]`` of the leaf ``name`` (its own stream of the
    analysis' ``seed``): Gaussian of ``mean``, ``var`` (correlated across tokens by ``m``'s
    field where :func:`token_normals` applies), then through the element-wise chain of its
    source law ``src`` when it has one."""
    rng = np.random.default_rng([seed, *name.encode()])
    found = token_normals(rng, m, grid, samples)
    if found is None:
        z = rng.standard_normal((samples, *grid)) * np.sqrt(var) + mean
    else:
        z = found[0] * np.sqrt(var * found[1]) + mean
    if src is not None:
        with np.errstate(all="ignore"):
            for f in src.chain:
                z = f.fn(z)
    return z


def token_normals(rng, m: Moments, grid: tuple[int, ...], samples: int):
    """(standard normals ``[samples, *grid]`` correlated across ``m``'s token axis, the
    per-token variance factor laid out at the grid's rank, 1 for a correlation field) when
    ``m``'s field is one token axis drawn in full (stride 1, as many tokens as the grid has
    along it), else None."""
    t = m.tokens
    if t is None:
        return None
    rank = len(grid)
    axes = token_axes(t, rank)
    if axes is None or len(axes) != 1 or t.stride != 1 or grid[axes[0]] != t.n or t.n < 2:
        return None
    axis = axes[0]
    cov = np.asarray(t.cov, dtype=np.float64)
    d = np.sqrt(np.maximum(np.diag(cov), 0.0))
    if not np.all(np.isfinite(cov)) or np.any(d <= 0):
        return None
    corr = cov / np.outer(d, d)
    w, v = np.linalg.eigh((corr + corr.T) / 2)
    root = v * np.sqrt(np.maximum(w, 0.0))  # root root^T = corr, eigenvalues clipped
    norms = np.sqrt(np.maximum((root * root).sum(axis=1), 1e-300))
    root = root / norms[:, None]
    e = rng.standard_normal((samples, *grid))
    z = np.moveaxis(np.matmul(root, np.moveaxis(e, axis + 1, -2)), -2, axis + 1)
    layout = [1] * rank
    layout[axis] = t.n
    factor = np.ones(layout) if is_correlation(cov) else (d * d).reshape(layout)
    return z, factor
