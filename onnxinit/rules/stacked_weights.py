"""A MatMul with a stack of constant matrices: one matrix per head (a block-diagonal layer,
RecurrentGemma's ``[H, R, K] @ W[H, K, N]``), broadcast against the activation's leading
axes. The rule for the MatMul op is ``linear.matmul_const``; this is its stacked case."""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from .grids import KEEP_CAP
from .layout import drop_constant_axes


def stacked_matmul(x: Moments, w: np.ndarray, y_rank: int, weight_first: bool) -> Moments:
    """MatMul with a stack of constant matrices ``W[..., K, N]`` (a block-diagonal layer, one
    matrix per head), broadcast against X's leading axes, for independent features:

        X @ W:  E[y] = mu @ W,     Var[y] = nu @ W^2
        W @ X:  E[y] = W @ mu,     Var[y] = W^2 @ nu

    with mu, nu X's statistics at its rank (size 1 where they do not vary, the summed axis
    spelled out), so each head reads its own statistics and the rows keep theirs. Where the
    output would hold more than ``KEEP_CAP`` cells the rows are pooled first, ``E = mean_r
    mu_r``, ``Var = mean_r nu_r + var_r mu_r`` per feature (the rows' mean offsets taken as
    independent across the features, exact where only the variances differ by row)."""
    w = np.asarray(w, dtype=np.float64)
    summed = -2 if weight_first else -1
    size = w.shape[-1] if weight_first else w.shape[-2]

    def spelled(a: np.ndarray) -> np.ndarray:
        a = a.reshape((1,) * max(0, 2 - a.ndim) + a.shape)
        shape = list(a.shape)
        shape[summed] = size
        return np.broadcast_to(a, shape)

    mu, nu = np.broadcast_arrays(spelled(x.mean), spelled(x.var))
    rows = -1 if weight_first else -2  # the axis W does not sum over
    out_cells = mu.size // size * (w.shape[-2] if weight_first else w.shape[-1])
    if mu.shape[rows] > 1 and out_cells > KEEP_CAP:
        mu, nu = mu.mean(axis=rows, keepdims=True), (nu.mean(axis=rows, keepdims=True)
                                                     + mu.var(axis=rows, keepdims=True))
    if weight_first:
        mean, var = np.matmul(w, mu), np.matmul(w * w, nu)
    else:
        mean, var = np.matmul(mu, w), np.matmul(nu, w * w)
    if mean.ndim < y_rank:
        mean = mean.reshape((1,) * (y_rank - mean.ndim) + mean.shape)
        var = var.reshape(mean.shape)
    return drop_constant_axes(mean, var)
