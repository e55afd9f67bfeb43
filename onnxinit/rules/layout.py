"""Per-axis statistics of a tensor whose elements a layout op moves: the full grid of a
Moments, dropping axes along which the statistics are constant, and the statistics of a reshaped
tensor (the Reshape, Flatten, Squeeze and Unsqueeze rule of shape.py; masks.keep_rows).

A reshape keeps the row-major order of the elements. The tracked axes occupy a range of
"digits" of the flat index; the output axes that cover this range carry the statistics exactly,
e.g. ``[N, C, H, W] -> [N, C*H*W]`` gives feature ``f`` the statistics of channel ``f // (H*W)``
(``np.repeat``), ``[N, S, D] -> [N, S, h, D/h]`` reshapes per-feature statistics to
``[h, D/h]``. When the range does not map onto whole output axes, they are pooled.
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from ..spatial import dense
from .context import RuleError

_GRID_CAP = 1 << 22
PADDED_CAP = 1 << 18  # statistics kept by a tensor that holds exact padding (holds_padding)


def scalar_of(x: Moments) -> Moments:
    """x's scalar statistics as 0-d arrays, keeping a source that is scalar too."""
    src = x.source
    if src is not None and (np.size(src.mean) != 1 or np.size(src.var) != 1):
        src = None
    elif src is not None:
        src = type(src)(np.reshape(src.mean, ()), np.reshape(src.var, ()), src.chain)
    return Moments(x.mean.reshape(()), x.var.reshape(()), src)


def full_grid(x: Moments, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, var) broadcast together at ``rank`` (size 1 on untracked axes)."""
    x = x.expand_rank(rank)
    mean, var = np.broadcast_arrays(x.mean, x.var)
    if mean.ndim != rank:
        raise RuleError("statistics of a higher rank than the tensor")
    return np.array(mean), np.array(var)


def drop_constant_axes(mean: np.ndarray, var: np.ndarray) -> Moments:
    """Drop the variation along axes where the statistics are constant."""
    for axis in range(mean.ndim):
        if mean.shape[axis] > 1:
            first = (slice(None),) * axis + (slice(0, 1),)
            second = (slice(None),) * axis + (slice(1, 2),)
            # the second index first: where the statistics vary (per position), it tells
            if not (np.array_equal(mean[second], mean[first])
                    and np.array_equal(var[second], var[first])):
                continue
            first_m = np.take(mean, [0], axis=axis)
            first_v = np.take(var, [0], axis=axis)
            if np.array_equal(mean, np.broadcast_to(first_m, mean.shape)) and np.array_equal(
                var, np.broadcast_to(first_v, var.shape)
            ):
                mean, var = first_m, first_v
    return Moments(mean, var)


def _map_span(flat: np.ndarray, inner: int, n: int, out_shape) -> tuple | None:
    """Per-element values ``flat[(i // inner) % n]`` (i the flat index) as an array over the
    output axes that determine them: (j0, values shaped out_shape[j0:j1+1]) or None."""
    r = len(out_shape)
    p = [int(np.prod(out_shape[j:], dtype=np.int64)) for j in range(r + 1)]
    top = inner * n
    j1 = next((j for j in range(r) if p[j + 1] <= inner < p[j]), None)
    j0 = next((j for j in range(r) if p[j + 1] < top <= p[j]), None)
    if j0 is None or j1 is None or j0 > j1:
        return None
    if inner % p[j1 + 1] or p[j0] % top:
        return None
    size = p[j0] // p[j1 + 1]
    if size > _GRID_CAP:
        return None
    # element t of the span reads flat[(t * p[j1+1] // inner) % n] = flat[(t // r) % n] with
    # r = inner / p[j1+1] (a whole number, above): each value r times, the whole m times,
    # written as one broadcast copy (an index array of `size` was 5x the time on Swin-T)
    r, m = inner // p[j1 + 1], size // (n * (inner // p[j1 + 1]))
    lead = flat.shape[:-1]
    values = np.broadcast_to(flat.reshape(lead + (1, n, 1)), lead + (m, n, r))
    return j0, values.reshape(lead + tuple(out_shape[j0 : j1 + 1]))


def _by_axis_groups(mean: np.ndarray, var: np.ndarray, in_shape, out_shape):
    """(mean, var) at ``out_shape`` when the reshape needs no element-wise work, else None.

    A reshape is a sequence of groups of consecutive axes (size-1 axes aside) whose sizes have
    equal products, each as small as possible ([384, 197, 64] -> [32, 12, 197, 64]: 384 ->
    32 x 12, 197 -> 197, 64 -> 64). When the statistics either vary along every axis of a group
    or along none of them, each group maps on its own, row-major order kept, and the statistics
    are reshaped without expanding the untracked axes (the cost of the general path below, which
    materializes every element between the first and the last tracked axis)."""
    if 0 in in_shape or 0 in out_shape:
        return None
    axes_in = [a for a, n in enumerate(in_shape) if n > 1]
    dims_out = [n for n in out_shape if n > 1]
    shape, i, j = [], 0, 0
    while i < len(axes_in):
        if j >= len(dims_out):
            return None
        group, size_in, size_out = [axes_in[i]], in_shape[axes_in[i]], dims_out[j]
        i, k = i + 1, j + 1
        while size_in != size_out:
            if size_in < size_out:
                if i >= len(axes_in):
                    return None
                group.append(axes_in[i])
                size_in *= in_shape[axes_in[i]]
                i += 1
            else:
                if k >= len(dims_out):
                    return None
                size_out *= dims_out[k]
                k += 1
        tracked = [mean.shape[a] > 1 for a in group]
        if all(tracked):
            shape += dims_out[j:k]
        elif any(tracked):
            return None
        else:
            shape += [1] * (k - j)
        j = k
    if j != len(dims_out):
        return None
    full = iter(shape)
    out = [next(full) if n > 1 else 1 for n in out_shape]
    return mean.reshape(out), var.reshape(out)


def reshape_is_exact(x: Moments, in_shape, out_shape) -> bool:
    """Whether :func:`reshape_moments` keeps every element's statistics without pooling or
    tiling: each group of axes either varies along all its axes or along none (a per-head bias
    on ``[B*H, S, S]`` -> ``[B, H, S, S]``)."""
    if x.is_scalar:
        return True
    mean, var = full_grid(x, len(in_shape))
    return _by_axis_groups(mean, var, tuple(in_shape), tuple(out_shape)) is not None


def reshape_moments(x: Moments, in_shape, out_shape) -> Moments:
    """Statistics of ``x`` (a tensor of ``in_shape``) reshaped to ``out_shape``: exact when the
    tracked axes' digit range of the flat index covers whole output axes, pooled otherwise."""
    if x.is_scalar:
        return scalar_of(x)
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    mean, var = full_grid(x, len(in_shape))
    grouped = _by_axis_groups(mean, var, in_shape, out_shape)
    if grouped is not None:
        return drop_constant_axes(*grouped)
    tracked = [a for a in range(len(in_shape)) if mean.shape[a] > 1]
    a0, a1 = tracked[0], tracked[-1]
    span = in_shape[a0 : a1 + 1]
    index = tuple(slice(None) if a0 <= a <= a1 else 0 for a in range(len(in_shape)))
    stats = np.stack([np.broadcast_to(mean[index], span), np.broadcast_to(var[index], span)])
    inner = int(np.prod(in_shape[a1 + 1 :], dtype=np.int64))
    n = int(np.prod(span, dtype=np.int64))
    found = _map_span(stats.reshape(2, n), inner, n, out_shape)
    if found is None:
        if len(tracked) > 1:  # keep the last tracked axis alone (the others pooled), retry
            m, v = x.values_along(a1, in_shape[a1])
            return reshape_moments(Moments.along(m, v, a1, len(in_shape)), in_shape, out_shape)
        return x.pooled()
    j0, values = found
    shape = [1] * len(out_shape)
    shape[j0 : j0 + values.ndim - 1] = values.shape[1:]
    return drop_constant_axes(values[0].reshape(shape), values[1].reshape(shape))




def holds_padding(m: Moments) -> bool:
    """Some indices of a tracked axis are exactly constant (variance 0 at every index of the
    other axes) and others are not: padding (a zero-padded window's tokens), which pooling
    that axis would turn into variance. Such a tensor keeps up to ``PADDED_CAP`` statistics,
    so that its other axes (the features, whose means the tokens share) need not be pooled
    either."""
    var = np.asarray(m.var)
    if var.ndim == 0 or var.size <= 1 or var.size > PADDED_CAP:
        return False
    exact = var == 0
    for axis in range(var.ndim):
        if var.shape[axis] > 1:
            others = tuple(a for a in range(var.ndim) if a != axis)
            constant = exact.all(axis=others) if others else exact
            if constant.any() and not constant.all():
                return True
    return False


POSITIONS_CAP = 1 << 14  # per-position statistics a map's transpose into tokens spells out


def positions_spelled(x: Moments, perm, shape) -> Moments:
    """A feature map ``[N, C, *S]`` whose positions differ (position classes: a padded Conv's
    border taps, a strided Conv's corners) transposed so that the channels leave axis 1 (into
    tokens ``[N, *S, C]``, a conv stage before attention): its per-position statistics
    ``[1, C, *S]`` (at most ``POSITIONS_CAP``), which the transpose moves with the axes; else
    ``x``. Each token keeps its own variance (SwiftFormer's 2x2 map: the four tokens' energies
    3.3-11.1)."""
    if x.spatial is None or list(perm[:2]) == [0, 1] or len(shape) < 3:
        return x
    if int(np.prod(shape[1:], dtype=np.int64)) > POSITIONS_CAP:
        return x
    mean, var = dense(x.spatial)
    return Moments(mean, var)


def positions_dense(x: Moments | None, shape) -> Moments | None:
    """``x`` with its position classes spelled out per position (``[1, C, *S]``, at most
    ``POSITIONS_CAP`` per sample), for a rule that reads plain per-element statistics: a
    product of a causal conv's output (its first tokens reach fewer taps) and an operand whose
    statistics vary per element (Mamba's ``dt B x``, per (channel, token, state) cell); else
    ``x``."""
    if x is None or x.spatial is None or shape is None or len(shape) < 3:
        return x
    if int(np.prod(shape[1:], dtype=np.int64)) > POSITIONS_CAP:
        return x
    mean, var = dense(x.spatial)
    return Moments(mean, var)


__all__ = ["PADDED_CAP", "POSITIONS_CAP", "drop_constant_axes", "full_grid", "holds_padding",
           "positions_dense", "positions_spelled", "reshape_is_exact", "reshape_moments", "scalar_of"]
