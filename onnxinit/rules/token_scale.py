"""The token field through a scale that differs from token to token (rotary embeddings).

A rotary position embedding multiplies each query or key by per-token constants and adds its
rotated half: ``y = x * C + rotate_half(x) * S`` with ``C_td = cos(theta_d t)``, ``S_td =
sin(theta_d t)``. Each product is ``x`` times a constant ``c`` that varies along the token axes
(and the features), so for tokens s, t of one sample and feature d::

    Cov(x_sd c_sd, x_td c_td) = c_sd c_td Cov(x_sd, x_td) = c_sd c_td nu_d cov[s, t]

and the field's feature-averaged covariance (``moments.Tokens``: one token-by-token covariance
shared by the features) is::

    Sigma_out[s, t] = Sigma_x[s, t] * K[s, t],   K[s, t] = sum_d w_d c_sd c_td / sum_d w_d

with ``w_d`` x's variance of feature d (pooled over the tokens) and ``Sigma_x`` x's token
covariance (``token_field.sigma``). The residual Add of the two products then sums their
fields (their cross terms pair feature d with its rotated partner, uncorrelated as the field
assumes), so a rotary embedding keeps the keys' covariance across tokens, turned by the
relative angle: ``Sigma_y[s, t] = Sigma_x[s, t] mean_d cos(theta_d (s - t))``. That is what
``Q K^T`` reads along the keys (only the symmetric part of each pair's rotation reaches a
logit: ``q^T R q`` of an antisymmetric R is 0), and a softmax ignores the component its keys
share. Dropping the field there (the earlier carrier) made the keys after a rotary embedding
independent: the probabilities of a decoder whose keys share a causal attention's running
average read 1.16x their measured variance (OLMo-2's second layer).

Not modelled, as everywhere in the field: a covariance that differs between features (the
low frequencies keep the tokens' correlation, the high ones turn it; one feature-averaged
``cov`` holds them).
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from .context import RuleError
from .mixture import lift
from .token_field import attach, grid, sigma


def scaled_field(x: Moments, c: np.ndarray, out: Moments, shape, axes: list[int],
                 stride: int = 1) -> Moments:
    """``out`` (= x * c, c a constant varying along the token ``axes``) with the field
    ``Sigma_x * K`` (module docstring)."""
    rank = len(shape)
    n = x.tokens.n
    sizes = [shape[a] for a in axes]
    if stride != 1 or int(np.prod(sizes, dtype=np.int64)) != n:
        raise RuleError("a per-token scale over merged or strided token axes")
    c = lift(np.asarray(c, dtype=np.float64), rank)
    if c.ndim != rank:
        raise RuleError("a scale of higher rank than its output")
    _, var = grid(x, rank)
    w = var.mean(axis=tuple(a for a in axes if var.shape[a] > 1), keepdims=True) \
        if any(var.shape[a] > 1 for a in axes) else var
    full = np.broadcast_shapes(c.shape, w.shape)
    full = tuple(shape[a] if a in axes else full[a] for a in range(rank))
    cf = np.moveaxis(np.broadcast_to(c, full), axes, list(range(len(axes)))).reshape(n, -1)
    wf = np.moveaxis(np.broadcast_to(w, full), axes, list(range(len(axes)))).reshape(n, -1)[0]
    total = float(wf.sum())
    if not np.isfinite(total) or total <= 0:
        raise RuleError("no variance to weight the features by")
    k = (cf * wf) @ cf.T / total
    sig = sigma(x, shape, axes, n, stride)
    return attach(out, shape, axes, sig * k, stride)
