"""Each channel's covariance between every pair of positions of a depthwise Conv's output on a
small map, borders included (:mod:`.depthwise_field` takes the positions as stationary).

A zero-padded kernel gives a border position fewer taps, and a position near the border its
own partial kernel sums: where a kernel's taps nearly cancel (``sum_k w_k`` small against
``sqrt(sum_k w_k^2)``), the sum over a map's positions is carried by its border, which a
stationary field does not see. Here the Conv is a matrix per channel, ``z_c = A_c x_c``
(``A_c[p, q] = w_c(t)`` where input position q is output position p's tap t)::

    Cov z_c = A_c (Cov x_c) A_c^T,        E z_c = A_c E x_c (+ bias)

The input's covariance: an element-wise chain ``g`` of an earlier depthwise Conv's output (up to
``DEPTH`` back), by Mehler's formula pair by pair with each position's own Hermite coefficients
(its mean and variance differ near the border), ``Cov(g_p, g_q) = sum_{k >= 1} c_k(p) c_k(q)
rho_pq^k``; otherwise each channel's carried stationary correlation (:mod:`.depthwise_field`).
Maps of at most ``MAX_POSITIONS`` positions and ``C P^2`` up to ``BUDGET``.
"""

from __future__ import annotations

import numpy as np

from .context import RuleContext
from .correlated_means import coefficients
from .covariance_layout import attr, conv_reading, within
from .depthwise_field import carried

DEPTH = 3
MAX_POSITIONS = 1024
BUDGET = 2e7  # C P^2 elements of one covariance


def _conv_matrix(w: np.ndarray, in_sizes, out_sizes, strides, dilations, pads) -> np.ndarray:
    """``A`` ``[C, P_out, P_in]`` of a depthwise kernel ``w`` ``[C, 1, k...]``."""
    c = w.shape[0]
    p_in, p_out = int(np.prod(in_sizes)), int(np.prod(out_sizes))
    a = np.zeros((c, p_out, p_in))
    out_idx = np.indices(out_sizes).reshape(len(out_sizes), -1)  # [n, P_out]
    for t in np.ndindex(*w.shape[2:]):
        coords = [o * s + ti * dl - pd for o, s, ti, dl, pd in
                  zip(out_idx, strides, t, dilations, pads)]
        inside = np.ones(p_out, dtype=bool)
        for x, size in zip(coords, in_sizes):
            inside &= (x >= 0) & (x < size)
        flat = np.ravel_multi_index([x[inside] for x in coords], in_sizes)
        a[:, np.nonzero(inside)[0], flat] += w[(slice(None), 0) + t][:, None]
    return a


def _stationary(ctx: RuleContext, x: str, shape) -> tuple[np.ndarray, np.ndarray]:
    """(Cov ``[C, P, P]``, mean ``[C, P]``) of an input from its carried correlation."""
    sizes = [int(s) for s in shape[2:]]
    radius = [s - 1 for s in sizes]
    rho = carried(ctx, x, shape, radius)  # [C, 2s-1, ...]
    idx = np.indices(sizes).reshape(len(sizes), -1)
    offset = tuple((idx[a][None, :] - idx[a][:, None]) + radius[a] for a in range(len(sizes)))
    corr = rho[(slice(None),) + offset]  # [C, P, P]
    nu = within(ctx.known[x], shape)
    mean = np.broadcast_to(ctx.known[x].values_along(1, shape[1])[0], (shape[1],))
    p = corr.shape[-1]
    return corr * nu[:, None, None], np.repeat(np.asarray(mean, np.float64)[:, None], p, axis=1)


def through_chain(cov: np.ndarray, mean: np.ndarray, fns, rank: int):
    """(Cov ``[C, P, P]``, mean ``[C, P]``) of ``g(z)`` for Gaussian z with these moments, by
    Mehler's formula with each position's coefficients; None where g is not finite."""
    var = np.maximum(np.diagonal(cov, axis1=1, axis2=2), 0.0)  # [C, P]
    # positions with the same moments in every channel (the interior: one class) once
    key = np.concatenate([mean, var], axis=0).T  # [P, 2C]
    scale = np.maximum(np.abs(key).max(axis=0), 1e-300)
    _, first, inverse = np.unique(np.round(key / scale, 9), axis=0, return_index=True,
                                  return_inverse=True)
    c_all, rem_all = [], []
    for p in first:
        found = coefficients(fns, mean[:, p], var[:, p], 1, rank)
        if found is None:
            return None
        c_all.append(found[0])
        rem_all.append(found[1])
    inverse = np.ravel(inverse)
    c = np.stack(c_all, axis=-1)[..., inverse]  # [ORDER + 1, C, P]
    rem = np.stack(rem_all, axis=-1)[..., inverse]  # [C, P]
    sd = np.sqrt(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(sd[:, :, None] * sd[:, None, :] > 0,
                       cov / (sd[:, :, None] * sd[:, None, :]), 0.0)
    rho = np.clip(rho, -1.0, 1.0).astype(np.float32)  # float32: the series' C P^2 products
    out = np.zeros_like(rho)
    power = np.ones_like(rho)
    for k in range(1, c.shape[0]):
        power *= rho
        ck = c[k].astype(np.float32)
        out += ck[:, :, None] * ck[:, None, :] * power
    r = np.sqrt(rem).astype(np.float32)
    out += r[:, :, None] * r[:, None, :] * power * rho
    return out.astype(np.float64), c[0]


def covariance(ctx: RuleContext, z: str, depth: int, chain_of):
    """(Cov ``[C, P, P]``, mean ``[C, P]``) of a depthwise Conv's output z over its positions
    (module docstring); None where z is no such Conv's or the map is too large."""
    graph, known = ctx.graph, ctx.known
    found = conv_reading(graph, known, z, depthwise=True)
    if found is None:
        return None
    node, x, w, shape_x, shape_z = found
    c = shape_z[1]
    in_sizes, out_sizes = [int(s) for s in shape_x[2:]], [int(s) for s in shape_z[2:]]
    p_in, p_out = int(np.prod(in_sizes)), int(np.prod(out_sizes))
    if max(p_in, p_out) > MAX_POSITIONS or c * max(p_in, p_out) ** 2 > BUDGET:
        return None
    if attr(node, "auto_pad") not in (None, "NOTSET", b"NOTSET"):
        return None
    n = len(out_sizes)
    strides = attr(node, "strides") or [1] * n
    dilations = attr(node, "dilations") or [1] * n
    pads = (attr(node, "pads") or [0] * (2 * n))[:n]
    inner = None
    if depth > 0:
        found = chain_of(ctx, x)
        if found is not None:
            before = covariance(ctx, found[0], depth - 1, chain_of)
            if before is not None:
                inner = through_chain(*before, found[1], len(shape_x))
    cov_in, mean_in = inner if inner is not None else _stationary(ctx, x, shape_x)
    a = _conv_matrix(w, in_sizes, out_sizes, strides, dilations, pads)
    cov = a @ cov_in @ np.swapaxes(a, 1, 2)
    mean = np.einsum("cpq,cq->cp", a, mean_in)
    if len(node.input) > 2 and node.input[2]:
        bias = graph.value(node.input[2])
        if bias is None:
            return None
        mean = mean + np.asarray(bias, dtype=np.float64).reshape(c, 1)
    return cov, mean


def mean_variance(cov: np.ndarray, sizes, axes) -> np.ndarray:
    """Per channel, the variance of the mean over the reduced spatial ``axes`` (of the map's,
    numbered from 2), averaged over the kept positions: ``diag(M Cov M^T)``."""
    idx = np.indices(sizes).reshape(len(sizes), -1)
    kept = [a for a in range(len(sizes)) if a + 2 not in axes]
    group = (np.ravel_multi_index([idx[a] for a in kept], [sizes[a] for a in kept])
             if kept else np.zeros(idx.shape[1], dtype=np.int64))
    groups = int(group.max()) + 1
    k = idx.shape[1] / groups
    m = np.zeros((groups, idx.shape[1]))
    m[group, np.arange(idx.shape[1])] = 1.0 / k
    return np.einsum("gp,cpq,gq->cg", m, cov, m).mean(axis=1)


__all__ = ["covariance", "mean_variance", "through_chain"]
