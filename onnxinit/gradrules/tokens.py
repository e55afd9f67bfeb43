"""The token field of a gradient (``Gradient.tokens``): the covariance of dL/dx across the
tokens of one sample, the backward counterpart of ``Moments.tokens`` (:mod:`onnxinit.rules.tokens`).

A loss on the mean over a sequence gives every token of a sample the same output gradient;
per-token layers keep most of that in common, so a sum over tokens (the value path of
attention, ``dV = P^T dY``; a bias or weight gradient, ``sum_r dy_r x_r``) adds coherently:
``Var[sum_t g_t] = sum_{s,t} Sigma[s, t]`` instead of ``sum_t Sigma[t, t]`` (16x at 16 tokens
for a fully shared gradient). The field uses :class:`onnxinit.moments.Tokens`:
``Cov(g[.., s, .., d], g[.., t, .., d]) = nu_d * cov[s, t]`` for tokens s, t of one sample and
feature d, ``nu_d`` the gradient's variance, ``cov`` normalised to mean diagonal 1; token axes
counted from the end, ``stride`` as there.

How the rules carry it:

* created by a mean or sum over token axes (:func:`shared`): the same dy for every token,
  ``cov = 1`` everywhere;
* linear maps over features, scales and biases, LayerNormalization: unchanged (each token's
  gradient is mapped by the same matrix; ``Cov(W^T g_s, W^T g_t)_i = sum_j W_ij^2 nu_j cov``);
* an independent factor a per element (an activation's derivative, :func:`through_factor`):
  ``Sigma'[s, t] = E[a_s a_t] (Sigma[s, t] + m^2) - m'^2`` off the diagonal, with
  ``E[a_s a_t] = E[a]^2`` (tokens' factors independent) or, when the forward tensor carries a
  token correlation, ``E[a]^2`` plus Mehler's covariance of ``a`` (:mod:`onnxinit.rules.hermite`);
* sums from several uses (:func:`summed`): covariances add (a part whose field is elsewhere
  taken as independent tokens);
* layout ops: the token axes follow (:func:`moved`, :func:`transposed`).
"""

from __future__ import annotations

import numpy as np

from ..moments import Tokens
from ..rules.token_field import inner_blocks, is_correlation, reshaped_token_axes, sigma

MAX_TOKENS = 4096


def axes_of(t: Tokens | None, rank: int) -> list[int] | None:
    """The token axes (non-negative) of a rank-``rank`` tensor, None if they do not fit."""
    if t is None:
        return None
    first = rank + t.axis
    if first < 0 or t.axis + t.span > 0:
        return None
    return list(range(first, first + t.span))


def make(axes: list[int], rank: int, sig: np.ndarray, stride: int = 1) -> Tokens | None:
    """A field from an unnormalised token covariance ``sig`` ([n, n]); None when degenerate."""
    sig = np.asarray(sig, dtype=np.float64)
    scale = float(np.mean(np.diag(sig))) if sig.size else 0.0
    if not np.isfinite(scale) or scale <= 0 or sig.shape[0] > MAX_TOKENS:
        return None
    return Tokens(axes[0] - rank, len(axes), sig / scale, stride)


def as_profile(m, shape) -> Tokens | None:
    """The forward field of ``m`` (a Moments of static ``shape``) with the per-token variance
    in its diagonal (``moments.Tokens``' first form, what the backward rules read): a
    correlation beside per-token variances (a zero-padded window's tokens, whose padding has
    none) becomes ``Sigma / mean diag Sigma`` with ``Sigma[s, t] = sqrt(v_s v_t) corr[s, t]``
    (:func:`onnxinit.rules.token_field.sigma`); a profile is returned as it is."""
    t = None if m is None else m.tokens
    if t is None or shape is None or not is_correlation(t.cov):
        return t
    axes = axes_of(t, len(shape))
    if axes is None:
        return t
    found = make(axes, len(shape), sigma(m, shape, axes, t.n, t.stride), t.stride)
    return t if found is None else found


def shared(axes: list[int], rank: int, n: int) -> Tokens | None:
    """The field of a gradient broadcast back over ``n`` tokens: the same value everywhere."""
    if not axes or axes != list(range(axes[0], axes[-1] + 1)) or axes[0] == 0 or n > MAX_TOKENS:
        return None
    return make(axes, rank, np.ones((n, n)))


def same_place(a: Tokens, b: Tokens) -> bool:
    return a.axis == b.axis and a.span == b.span and a.n == b.n and a.stride == b.stride


def summed(parts: list[tuple[Tokens | None, float]]) -> Tokens | None:
    """The field of a sum of independent gradients (``(field, pooled variance)`` each; a part
    without a field, or with one on other axes than the largest part's, has independent
    tokens: ``var * I``; q, k and v of a fused projection, k's field along its features)."""
    fields = [(t, v) for t, v in parts if t is not None]
    if not fields:
        return None
    ref = max(fields, key=lambda tv: tv[1])[0]
    sig = sum(v * (t.cov if t is not None and same_place(t, ref) else np.eye(ref.n))
              for t, v in parts)
    out = make([0], 1, sig, ref.stride)
    return None if out is None else Tokens(ref.axis, ref.span, out.cov, ref.stride)


def through_factor(t: Tokens | None, m: float, var: float, p1: float, p2: float,
                   factor_cov: np.ndarray | None = None) -> Tokens | None:
    """The field of ``dy * a`` (module docstring): ``m``/``var`` pooled statistics of dy,
    ``p1 = E[a]``, ``p2 = E[a^2]``, ``factor_cov`` the covariance of a across tokens (None:
    independent)."""
    if t is None:
        return None
    second = t.cov * var + m * m
    cross = p1 * p1 + (factor_cov if factor_cov is not None else 0.0)
    m_out = m * p1
    sig = cross * second - m_out * m_out
    sig[np.diag_indices(t.n)] = np.diag(second) * p2 - m_out * m_out
    out = make([0], 1, sig, t.stride)
    return None if out is None else Tokens(t.axis, t.span, out.cov, t.stride)


def coherent_gain(t: Tokens | None) -> float:
    """``sum_{s,t} cov[s, t] / n``: how much larger a sum over the tokens is than a sum of
    independent ones (1 without a field)."""
    if t is None:
        return 1.0
    return max(float(t.cov.sum()) / t.n, 0.0)


def cross_gain(a: Tokens | None, b: Tokens | None, n: int) -> float:
    """``sum_{s,t} ca[s, t] cb[s, t] / n`` for two fields along the same n tokens (identity
    where a field is missing): the gain of ``sum_t x_t g_t`` with x and g independent."""
    ca = a.cov if a is not None and a.n == n else np.eye(n)
    cb = b.cov if b is not None and b.n == n else np.eye(n)
    return max(float((ca * cb).sum()) / n, 0.0)


def moved(t: Tokens | None, from_shape, to_shape) -> Tokens | None:
    """The field after a reshape from ``from_shape`` to ``to_shape`` (same elements, same
    order): the token digit of the flat index keeps its place (as the forward field,
    :func:`onnxinit.rules.tokens.carry`); None when it is split between axes. A field that
    would reach into the batch axis (windows of a map merged into the batch: ``[B, nW, N, C]
    -> [B nW, N, C]``) keeps the covariance within one group of the inner axes (the mean of
    its diagonal blocks), as the windows' attention sees it."""
    axes = axes_of(t, len(from_shape))
    if axes is None or from_shape is None or to_shape is None:
        return None
    placed = reshaped_token_axes(axes[-1], t.n, t.stride, from_shape, to_shape)
    if placed is None:
        return None
    out_axes, stride = placed
    if out_axes[0] == 0 and len(out_axes) > 1 and stride == 1:
        size = int(np.prod([to_shape[a] for a in out_axes[1:]], dtype=np.int64))
        cov = inner_blocks(t, size) if size > 1 else None
        if cov is None:
            return None
        return Tokens(out_axes[1] - len(to_shape), len(out_axes) - 1, cov, 1)
    return Tokens(out_axes[0] - len(to_shape), len(out_axes), t.cov, stride)


def transposed(t: Tokens | None, perm, rank: int) -> Tokens | None:
    """The field of a Transpose's input from its output's (``out axis j = in axis perm[j]``)."""
    axes = axes_of(t, rank)
    if axes is None:
        return None
    new = [int(perm[j]) for j in axes]
    if new != list(range(new[0], new[0] + len(new))):
        return None
    return Tokens(new[0] - rank, t.span, t.cov, t.stride)


def kept_unless(t: Tokens | None, rank: int, touched) -> Tokens | None:
    """``t`` when none of the ``touched`` axes is a token axis (same rank), else None."""
    axes = axes_of(t, rank)
    if axes is None or any(a % rank in axes for a in touched):
        return None
    return t
