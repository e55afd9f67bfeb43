"""The token field (``Moments.tokens``) as a covariance matrix: where its axes are, the
feature-averaged token covariance of a tensor, attaching a new one to an output, Mehler's
transfer of it through an element-wise function, and the per-token variance profile that its
diagonal holds, laid out along the token axes (for the point-wise rules, tokens.py).

The field records, per sequence tensor, ``Sigma[s, t] = mean_d Cov(x[s, d], x[t, d])`` as
``nu_d * cov[s, t]`` (moments.Tokens): one token-by-token covariance shared by the features,
scaled by each feature's variance. Token axes are counted from the end; a batch merged into
them is allowed (token = (flat index // stride) % n). How each op carries the field is in
tokens.py; attention.py creates it and softmax.py reads it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..moments import Moments, Tokens, compressed
from .hermite import coefficients
from .mixture import lift

_MAX_FEATURES = 4096  # features sampled for the Hermite coefficients
# per-token variances whose spread (std / mean of the field's diagonal) is under this are left
# pooled: E[f] and Var[f] over a mix of variances differ from f at the mean variance in the
# second order (x^2: Var = 2 E[nu^2] = 2 E[nu]^2 (1 + spread^2), 1.6% here), and spelling them out
# multiplies a point-wise rule's cost by the tokens (GPT-2's MLPs after LayerNorm: spread 0.1,
# 10x the analysis time; a causal attention's output: 0.25-1)
_UNEVEN = 0.125
# a power's mean follows each token's variance in the first order (E[x^2] = mu^2 + nu p_t), and a
# mean over the features (RMSNorm's mean square, a LayerNorm written out) keeps that: its
# variance over the tokens gains nu^2 spread^2 against 2 nu^2 / K within one token (T5's decoder
# at 64 features, spread 0.117: the mean square 0.71x pooled). A power is one cheap point-wise
# rule, so its inputs are spelled out from this spread on
POWER_UNEVEN = 0.01
# tokens of a field spelled out over every index of several axes (Swin's windows put back on
# the map: Swin-T's 14x14 and 7x7 stages; its 28x28 stage, with 784, cost 2.5x the analysis
# time), at most
MAX_EXPANDED = 256


def token_axes(t: Tokens, rank: int) -> list[int] | None:
    """The token axes (non-negative) of a rank-``rank`` tensor, None if they do not fit."""
    first = rank + t.axis
    if first < 0 or t.axis + t.span > 0:
        return None
    return list(range(first, first + t.span))


def grid(m: Moments, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """``m``'s mean and variance broadcast to each other at ``rank`` dims."""
    m = m.expand_rank(rank)
    mean, var = np.broadcast_arrays(m.mean, m.var)
    if mean.ndim == 0:
        mean, var = mean.reshape((1,) * rank), var.reshape((1,) * rank)
    return mean, var


def profile(m: Moments, shape, axes: list[int], n: int, stride: int = 1) -> np.ndarray:
    """Per-token variance [n] (mean over the other axes; token index = (flat index // stride)
    % n)."""
    rank = len(shape)
    _, var = grid(m, rank)
    other = tuple(a for a in range(rank) if a not in axes)
    var = var.mean(axis=other) if other else var
    full = np.broadcast_to(var, tuple(shape[a] for a in axes)).reshape(-1)
    return full.reshape(-1, n, stride).mean(axis=(0, 2))


def sigma(m: Moments | None, shape, axes: list[int], n: int,
          stride: int = 1) -> np.ndarray | None:
    """Feature-averaged token covariance [n, n] of ``m`` at the given token axes: ``mean(var)
    * cov`` with the field (a field of fewer tokens on the same axes, the outer digits merged
    like a batch, is spread to ``n`` with those groups independent: :func:`expanded`), else
    diag of its per-token variance (independent tokens)."""
    if m is None:
        return None
    t = m.tokens
    if t is not None and t.stride == stride and token_axes(t, len(shape)) == axes:
        cov = t.cov
        if is_correlation(cov) and t.n == n:  # the per-token variance is m's own
            cov = reprofiled(cov, profile(m, shape, axes, n, stride))
            return cov * float(np.mean(m.var)) / float(np.mean(np.diag(cov)))
        if t.n == n:
            return float(np.mean(m.var)) * cov
        if stride == 1 and n % t.n == 0:
            return float(np.mean(m.var)) * np.kron(np.eye(n // t.n), cov)
    return np.diag(profile(m, shape, axes, n, stride))


def expanded(t: Tokens, sizes) -> np.ndarray | None:
    """The field over every index of token axes of ``sizes`` (``prod(sizes)`` a multiple of
    ``t.n``): the groups of ``t.n`` consecutive indices (the batch or windows merged into the
    axes) are independent, ``kron(I, cov)``; None when strided or over ``MAX_EXPANDED``."""
    total = int(np.prod(sizes, dtype=np.int64))
    if total == t.n:
        return t.cov
    if t.stride != 1 or total % t.n or total > MAX_EXPANDED:
        return None
    return np.kron(np.eye(total // t.n), t.cov)


def inner_blocks(t: Tokens, size: int) -> np.ndarray | None:
    """The field of the innermost ``size`` digits of the token index, its outer digits taken as
    independent samples: the mean of ``cov``'s diagonal blocks of ``size``."""
    if t.stride != 1 or t.n % size:
        return None
    k = t.n // size
    return np.einsum("iaib->ab", t.cov.reshape(k, size, k, size)) / k


# a constant at or below this where other elements vary is a mask value (-1e4, -1e9, finfo.min
# put in by Where(cond, logits, value)), not a token whose variance pools with the others'
MASK_VALUE = -1e4


def attach(m: Moments, shape, axes: list[int], sig: np.ndarray | None,
           stride: int = 1) -> Moments:
    """``m`` with the variance pooled over the token axes and the field ``sig / mean diag``
    (the pooled-out per-token profile lives in the field's diagonal), tokens ``stride`` apart
    along the flattened token axes. ``sig`` a correlation (flat diagonal) and ``m``'s variance
    varying along the token axes: ``m`` keeps its per-token variance, which may differ from
    feature to feature (a bidirectional recurrent layer's two directions: the reverse one's last
    index is its first step), and the field is the correlation (``moments.Tokens``)."""
    if sig is None:
        return without(m)
    scale = float(np.mean(np.diag(sig)))
    if not np.isfinite(scale) or scale <= 0:
        return without(m)
    rank = len(shape)
    var = lift(m.var, rank)
    if var.ndim == 0 or not any(var.shape[a] > 1 for a in axes):
        # the variance is already the same for every token: m unchanged, its distribution kept
        t = Tokens(axes[0] - rank, len(axes), sig / scale, stride)
        return Moments(m.mean, m.var, m.source, m.mixture, t, m.rows)
    mean, var = grid(m, rank)
    if is_correlation(sig):  # the per-token variance lives in m (a recurrent layer's Y)
        # m's per-element law (its source: a ReLU's output, whose square reads E[x^4]) holds
        return Moments(m.mean, m.var, m.source, m.mixture,
                       Tokens(axes[0] - rank, len(axes), sig / scale, stride), m.rows)
    t = Tokens(axes[0] - rank, len(axes), sig / scale, stride)
    pooled = tuple(a for a in axes if var.shape[a] > 1)
    masked = np.isneginf(mean) | ((var == 0) & (mean <= MASK_VALUE))
    if masked.any():  # masked elements keep variance 0; the others share the pooled variance
        count = np.maximum((~masked).sum(axis=pooled, keepdims=True), 1)
        var = np.where(masked, 0.0, np.where(masked, 0.0, var).sum(axis=pooled, keepdims=True) / count)
    else:
        var = var.mean(axis=pooled, keepdims=True)
    mean = compressed(mean, np.broadcast_to(var, mean.shape)).mean  # means may be per token
    return Moments(mean.reshape((1,) * (rank - mean.ndim) + mean.shape), var, None, None, t,
                   m.rows)


def is_correlation(sig: np.ndarray) -> bool:
    """The field's diagonal is flat (to rounding): it holds no per-token variance profile."""
    d = np.diag(sig)
    return float(np.ptp(d)) <= 1e-9 * float(np.max(np.abs(d)))


def per_token(m: Moments, shape, uneven: float = _UNEVEN) -> tuple[list[int], np.ndarray] | None:
    """(token axes, per-token variance profile ``p`` laid out along them at the tensor's rank,
    mean 1 over the tokens) when ``m``'s field says the variance differs from token to token
    (the standard deviation of ``diag(cov)`` over ``uneven`` of its mean), else None. The element at flat token
    index ``i`` has variance ``nu_d p[(i // stride) % n]``."""
    t = m.tokens
    if t is None or shape is None:
        return None
    rank = len(shape)
    axes = token_axes(t, rank)
    if axes is None:
        return None
    d = np.diag(t.cov)
    mean = float(np.mean(d))
    if not np.isfinite(mean) or mean <= 0 or float(np.std(d)) <= uneven * mean:
        return None
    sizes = [shape[a] for a in axes]
    total = int(np.prod(sizes, dtype=np.int64))
    if total % (t.n * t.stride):
        return None
    p = (d / mean)[(np.arange(total) // t.stride) % t.n]
    layout = [1] * rank
    for a, size in zip(axes, sizes):
        layout[a] = size
    return axes, p.reshape(layout)


def profile_grid(m: Moments, shape, uneven: float = _UNEVEN) -> Moments | None:
    """``m`` with its per-token variance spelled out along the token axes, ``Var[x_td] = nu_d
    p_t`` (:func:`per_token`), as plain per-element moments (no field, Gaussian); None when the
    field says every token has (within ``uneven``) the same variance."""
    found = per_token(m, shape, uneven)
    if found is None:
        return None
    _, p = found
    m = m.expand_rank(len(shape))
    var = m.var.reshape((1,) * len(shape)) if m.var.ndim == 0 else m.var
    return Moments(m.mean, var * p)


def reprofiled(sig: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The token covariance with ``sig``'s correlations and the per-token variance profile
    ``p``: ``sqrt(p_s p_t) sig[s, t] / sqrt(sig[s, s] sig[t, t])``."""
    d = np.sqrt(np.maximum(np.diag(sig), 1e-300))
    q = np.sqrt(np.maximum(p, 0.0))
    return sig / np.outer(d, d) * np.outer(q, q)


def without(m: Moments | None) -> Moments | None:
    """``m`` without the token field (independent tokens)."""
    if m is None or m.tokens is None:
        return m
    return Moments(m.mean, m.var, m.source, m.mixture, None, m.rows)


def same_field(x: Moments, out: Moments, shape) -> Moments:
    """``out`` with ``x``'s field unchanged (same token axes, counted from the end)."""
    t = x.tokens
    axes = token_axes(t, len(shape)) if shape is not None else None
    if axes is None or int(np.prod([shape[a] for a in axes])) % (t.n * t.stride):
        return without(out)
    return attach(out, shape, axes, float(np.mean(x.var)) * t.cov, t.stride)


def mehler_weights(fn: Callable, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """``a_n = mean_d c_n(d)^2`` for n = 1..8 and, last, the mean remainder (hermite.py)."""
    mean, var = np.ravel(mean), np.ravel(var)
    if mean.size > _MAX_FEATURES:
        pick = np.linspace(0, mean.size - 1, _MAX_FEATURES).astype(np.int64)
        mean, var = mean[pick], var[pick]
    c, remainder = coefficients(fn, mean, var)
    return np.append((c[1:] ** 2).mean(axis=1), remainder.mean())


def transfer(sig_in: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Mehler: ``Sigma_out = sqrt(p_s p_t) sum_n a_n rho^n``, rho the correlation of
    ``sig_in``, p its per-token profile (relative to its mean)."""
    d = np.sqrt(np.maximum(np.diag(sig_in), 1e-300))
    rho = np.clip(sig_in / np.outer(d, d), -1.0, 1.0)
    scale = np.outer(d, d) / np.mean(d * d)
    out = np.zeros_like(rho)
    power = np.ones_like(rho)
    for coefficient in a:
        power = power * rho
        out += coefficient * power
    return out * scale


def pooled_features(m: Moments, shape, axes) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (mean, var) of ``m`` with the token axes pooled."""
    mean, var = grid(m, len(shape))
    keep = tuple(a for a in axes if mean.shape[a] > 1)
    if keep:
        m0 = mean.mean(axis=keep, keepdims=True)
        var = var.mean(axis=keep, keepdims=True) + ((mean - m0) ** 2).mean(axis=keep, keepdims=True)
        mean = m0
    return mean.reshape(-1), np.broadcast_to(var, mean.shape).reshape(-1)


def reshaped_token_axes(last_axis: int, n: int, stride: int, from_shape,
                        to_shape) -> tuple[list[int], int] | None:
    """Where a reshape from ``from_shape`` to ``to_shape`` (same elements, same order) puts a
    token digit of ``n`` tokens whose last axis is ``last_axis`` and whose consecutive tokens are
    ``stride`` apart along it: (the output axes covering the digit, the new stride), or None
    when the digit is split between axes. With ``S`` elements between consecutive tokens, the
    output axes covering the digit are those from the one where ``S`` falls, merged with outer
    axes (the batch: index % n) until they hold ``n`` tokens."""
    step = int(np.prod(from_shape[last_axis + 1:], dtype=np.int64)) * stride
    after = [int(np.prod(to_shape[j + 1:], dtype=np.int64)) for j in range(len(to_shape))]
    j1 = next((j for j in range(len(to_shape)) if after[j] <= step < after[j] * to_shape[j]),
              None)
    if j1 is None or step % after[j1]:
        return None
    stride = step // after[j1]
    acc, j0 = 1, j1
    while True:
        acc *= to_shape[j0]
        if acc >= n * stride or j0 == 0:
            break
        j0 -= 1
    if acc % (n * stride):
        return None
    return list(range(j0, j1 + 1)), stride
