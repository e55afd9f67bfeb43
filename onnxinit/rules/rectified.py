"""A ReLU of a Gaussian mixture as a Gaussian mixture (:func:`relu_mixture`).

``mixture.through`` replaces each component of ``ReLU(x)`` by the Gaussian of its moments: exact
for the output's mean and variance, but a component that straddles 0 becomes a Gaussian that
straddles it too, and the next residual ReLU (``ReLU(ReLU(a) + b)``, a ResNet's stream) sees a
smeared law: its ``P(x > 0)`` (dReLU's gate) and its variance drift over the blocks (BatchNorm
ResNet-50: the stream's variance 11% short by the end of the third stage, its gradients 20-28%
high). Here each component keeps what a ReLU makes of it: its point mass at 0 (all components'
merged into one, ``w_0 = sum_k w_k Phi(-m_k / s_k)``) and its positive part cut in
POSITIVE_BINS bins of equal probability, each the Gaussian of its truncated normal's exact
moments. The positive parts are then merged, sorted by mean, into at most MAX_COMPONENTS - 1
(moment-matched: the mean and variance stay exact). One Gaussian per positive part spills below
0 (a half-normal as one Gaussian puts 9% of its mass there), and a stream of residual ReLUs
``s_k = ReLU(s_{k-1} + g_k)`` clipped too much block after block: 0.83x of the variance after 30
blocks, torchvision's ResNet-152 (BatchNorm) 0.86x by the end of its third stage; with three
bins 0.99x for both.
"""

from __future__ import annotations

import numpy as np
from .. import special
from .mixture import truncated_bins, zero_edge

MAX_COMPONENTS = 8
# Bins of each component's positive part before merging. 3 makes the forward law exact on a
# residual ReLU stream (the module docstring; the gate P(a > 0) of torchvision ResNet-152's
# layer3 within 0.2% of onnxruntime's, against 0.5% low with 1). The backward reads this law
# for dReLU's gate together with the gradient's conditional on the stream's value
# (gradrules/conditional.py); with one gate at a time, the single-Gaussian law's slightly high
# gate had been offsetting the gates' dependence (tests/gradrules/test_residual.py).
POSITIVE_BINS = 3
_SQRT2 = np.sqrt(2.0)
_BLOCK = 2048  # elements per block of relu_mixture: 24 components x 2048 x 8 bytes = 393 KB


def positive_bins(m: np.ndarray, v: np.ndarray, bins: int):
    """Each N(m, v)'s part above 0 cut in ``bins`` bins of equal probability
    (``mixture.truncated_bins``): (P(bin), E[x | bin], Var[x | bin]) with a leading bin axis
    (bins x components, flattened)."""
    s, a0, p0 = zero_edge(m, v)
    w, mean, var = truncated_bins(m, s, a0, np.inf, p0, 1.0 - p0, bins)
    flat = (-1,) + m.shape[1:]
    return w.reshape(flat), mean.reshape(flat), var.reshape(flat)


def truncated_positive(m: np.ndarray, v: np.ndarray):
    """(P(x > 0), E[x | x > 0], Var[x | x > 0]) for x ~ N(m, v), element-wise. With
    ``alpha = -m / s`` and the inverse Mills ratio ``lam = phi(alpha) / (1 - Phi(alpha))``
    (through erfcx: stable far in the tail)::

        E = m + s lam,   Var = v (1 + alpha lam - lam^2)

    A component with v = 0 is a point: kept whole when m > 0, dropped otherwise."""
    s = np.sqrt(v)
    point = s <= 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # alpha below -8: q = 1 and lam = 0 to double precision (and erfcx stays finite)
        alpha = np.maximum(np.where(point, 0.0, -m / np.where(point, 1.0, s)), -8.0)
        ex = special.erfcx(alpha / _SQRT2)  # Phi(-alpha) = erfcx(alpha/sqrt2) e^(-alpha^2/2) / 2
        q = np.where(point, (m > 0).astype(np.float64), 0.5 * ex * np.exp(-0.5 * alpha * alpha))
        lam = np.sqrt(2.0 / np.pi) / ex
        mean = np.where(point, m, m + s * lam)
        var = np.where(point, 0.0, v * np.clip(1.0 + alpha * lam - lam * lam, 0.0, None))
    return q, mean, var


def relu_mixture(mixture):
    """``ReLU(x)`` for x a Gaussian mixture (w, m, v) (leading component axis): the merged
    point mass at 0 first, then each component's positive part (module docstring), at most
    MAX_COMPONENTS in all (:func:`merge`). Worked in blocks of elements whose arrays stay in
    cache (the same values as in one piece: every step is per element)."""
    w, m, v = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in mixture))
    cells = w.shape[1:]
    w, m, v = (a.reshape(a.shape[0], -1) for a in (w, m, v))
    size = w.shape[1]
    out = None
    for start in range(0, size, _BLOCK):
        part = slice(start, min(start + _BLOCK, size))
        block = _relu_mixture_rows(w[:, part], m[:, part], v[:, part])
        if out is None:
            out = tuple(np.empty((b.shape[0], size)) for b in block)
        for o, b in zip(out, block):
            o[:, part] = b
    if out is None:  # no elements
        out = (np.empty((1 + min(w.shape[0] * POSITIVE_BINS, MAX_COMPONENTS - 1), 0)),) * 3
    return tuple(o.reshape(o.shape[:1] + cells) for o in out)


def _relu_mixture_rows(w: np.ndarray, m: np.ndarray, v: np.ndarray):
    """:func:`relu_mixture` of (components x elements) arrays."""
    if POSITIVE_BINS > 1:
        bw, mean, var = positive_bins(m, v, POSITIVE_BINS)
        q = bw.reshape((-1,) + w.shape[1:])  # bin-major: bin b of component k at b K + k
        zero = (w * (1.0 - q.reshape((POSITIVE_BINS,) + w.shape).sum(axis=0))).sum(
            axis=0, keepdims=True)
        w = np.concatenate([w] * POSITIVE_BINS)
        mean, var = (a.reshape((-1,) + w.shape[1:]) for a in (mean, var))
    else:
        q, mean, var = truncated_positive(m, v)
        zero = (w * (1.0 - q)).sum(axis=0, keepdims=True)
    pw, pm, pv = merge(w * q, mean, var, MAX_COMPONENTS - 1)
    return (np.concatenate([zero, pw]), np.concatenate([np.zeros_like(zero), pm]),
            np.concatenate([np.zeros_like(zero), pv]))


def merge(w: np.ndarray, m: np.ndarray, v: np.ndarray, most: int):
    """(w, m, v) with at most ``most`` components: sorted by mean per element, the components
    whose cumulative weight midpoint falls in the same of ``most`` equal weight ranges are
    merged by moment matching (``W = sum w``, ``M = sum w m / W``,
    ``V = sum w (v + m^2) / W - M^2``); an empty range gives a component of weight 0.
    Worked per element as a row of components (contiguous), the sums of each (element, range)
    pair are one weighted bincount each."""
    count = w.shape[0]
    if count <= most:
        return w, m, v
    w, m, v = np.broadcast_arrays(w, m, v)
    cells_shape = w.shape[1:]
    rows = [np.ascontiguousarray(a.reshape(count, -1).T) for a in (w, m, v)]
    cells = rows[0].shape[0]
    base = np.arange(cells).reshape(-1, 1)
    flat = (np.argsort(rows[1], axis=1, kind="stable") + base * count).ravel()
    w, m, v = (a.ravel().take(flat).reshape(cells, count) for a in rows)
    total = w.sum(axis=1, keepdims=True)
    mid = np.cumsum(w, axis=1)
    mid -= w / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        mid = np.where(total > 0, mid / total, 0.0)
    mid *= most
    group = np.minimum(mid.astype(np.int64), most - 1)
    group += base * most
    keys = group.ravel()
    first_moment = w * m
    second_moment = first_moment * m
    second_moment += w * v
    weights, first, second = (
        np.bincount(keys, weights=a.ravel(), minlength=cells * most).reshape(cells, most).T
        for a in (w, first_moment, second_moment))
    safe = np.where(weights > 0, weights, 1.0)
    mean = first / safe
    var = np.maximum(second / safe - mean * mean, 0.0)
    out = (most,) + cells_shape
    return weights.reshape(out), mean.reshape(out), var.reshape(out)


__all__ = ["MAX_COMPONENTS", "merge", "relu_mixture", "truncated_positive"]
