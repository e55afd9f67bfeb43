"""A mean (sum) over the channels and every position of a Conv's map together: LayerNorm over
``[C, H, W]`` written out (``ReduceMean`` of x, of ``(x - mean)^2``), a mean square over a
whole feature map, whatever exporter wrote it.

The reduce rule takes the ``K = C P`` values as independent. Two values of a Conv's output
``z`` correlate across channels and offsets, ``R[j, k, d] = Corr(z_j(p), z_k(p + d))``
(:mod:`onnxinit.cross_channel`'s field, here for a dense kernel: ``conv_covariance`` of the
input's field, positions stationary, offsets up to ``correlation.MAX_OFFSET``). The input's
field: none (independent channels and positions: a graph input); an element-wise chain of an
earlier Conv's output, whose own field (recursively, ``DEPTH`` Convs back) goes through the
chain by Mehler's formula; else the input's carried correlation (its cross-channel field, or
each channel's own correlation). The reduced values ``y = g(z)`` (an element-wise chain,
:func:`.correlated_means.chain`, a centring over the same axes included) sum by Mehler's
formula per pair of channels and offset::

    Var(sum y) = sum_d n(d) sum_jk Cov(g_j, g_k)(R[j, k, d]),    n(d) = prod_a (S_a - |d_a|)

over the interior's own terms ``P sum_j Var g_j`` this scales the same own terms summed over
the position classes (a zero-padded Conv's border positions have fewer taps). On a ReLU
Conv's map (3 -> 16 channels, 16x16) the channels' means correlate through the kernels' tap
sums (the pre-activation mean over the map is one Conv's, with the taps summed) and through
Mehler's squared correlations (all positive): the mean's variance is 4x the independent one.
None where the chain does not reach a Conv, or above ``cross_channel.FIELD_BUDGET``.
"""

from __future__ import annotations

import weakref
from math import factorial

import numpy as np

from .. import cross_channel
from ..correlation import MAX_OFFSET
from ..spatial import class_weights, positions
from ..strict import fall_back
from .context import RuleContext, RuleError
from .correlated_means import chain, coefficients, covariance_sum
from .covariance_layout import attr, conv_reading, within
from .field_kernels import dense_kernel
from .normalised_maps import normalised_conv
from .pool_windows import cell_arrays

_MEMO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # graph -> conv_field's
# a fitted field's transfer (multiply-adds): a 32 -> 64 3x3 Conv keeps offsets up to 2, which
# the next 3x3 Conv's tap pairs reach (a GroupNorm's statistics, rules/group_statistics.py)
FIT_BUDGET = 8e7
DEPTH = 3  # Convs back through which the field is computed (then the carried correlation)


def _carried(ctx: RuleContext, x: str, shape) -> np.ndarray:
    """The input's correlation field as carried (channels independent where no cross-channel
    field is: each its own correlation; none at all: independent positions)."""
    sp = positions(ctx.known[x], shape)
    n = len(shape) - 2
    if sp is None or sp.corr is None:
        return cross_channel.from_diagonal(np.ones((1,) * (1 + n)), shape[1])
    if sp.corr.cross is not None:
        return sp.corr.cross.corr
    return cross_channel.from_diagonal(sp.corr.rho, shape[1])


def _through_chain(ctx: RuleContext, x: str, depth: int, fit: bool):
    """(correlation field of the chain's Gaussian, its mean and variance per channel, fns) of
    x an element-wise chain of a Conv's output, or of a per-sample normalisation of one
    (:mod:`.normalised_maps`, where ``fit``); None otherwise."""
    found = chain(ctx, x, ())
    gauss = conv_field(ctx, found[0], depth - 1, fit) if found is not None else None
    if gauss is not None:
        corr, var, mean = gauss
        return corr, mean, var, found[1]
    if not fit:
        return None
    normalised = normalised_conv(ctx, x)
    if normalised is None:
        return None
    z, fns, mean, var = normalised
    gauss = conv_field(ctx, z, depth - 1, fit)
    return None if gauss is None else (gauss[0], mean, var, fns)


def input_field(ctx: RuleContext, x: str, depth: int, fit: bool = False):
    """(correlation field ``[C, C, *d]``, variance within a position ``[C]``) of a Conv's input;
    ``fit``: the Convs back fit their fields to the budget (:func:`conv_field`) and the walk
    goes through a per-sample normalisation."""
    shape = ctx.graph.shape(x)
    if depth > 0:
        found = _through_chain(ctx, x, depth, fit)
        if found is not None:
            corr, mean, var, fns = found
            coeffs = coefficients(fns, mean, var, 1, len(shape))
            if coeffs is not None:
                c, rem = coeffs
                own = (c[1:] ** 2).sum(axis=0) + rem
                if np.all(own > 0):
                    amplitudes = c[1:] * np.sqrt([factorial(k) for k in range(1, len(c))])[:, None]
                    return cross_channel.mehler(corr, amplitudes, own), own
    return _carried(ctx, x, shape), within(ctx.known[x], shape)


def conv_field(ctx: RuleContext, z: str, depth: int, fit: bool = False):
    """(correlation field ``[C, C, *d]``, variance ``[C]``, mean ``[C]``) of a Conv's output
    ``z`` in the interior; None where z is no Conv's or the field is over budget. ``fit``: the
    offsets kept shrink from ``MAX_OFFSET`` until the transfer fits the budget (a wide
    layer's field over fewer offsets). Memoised per graph while z's moments are the same; a
    fitted field once, at the depth first asked (its Convs back carry the same fields)."""
    memo = _MEMO.setdefault(ctx.graph, {})
    key = (z, fit) if fit else (z, depth, fit)
    hit = memo.get(key)
    if hit is not None and hit[0] is ctx.known.get(z):
        return hit[1]
    found = _conv_field(ctx, z, depth, fit)
    memo[key] = (ctx.known.get(z), found)
    return found


def _transfer(c_in: int, c_out: int, kern, strides, radius) -> int:
    """Multiply-adds of ``conv_covariance``'s first pass (``C_in C_out nnz`` per offset
    reached) and the output field's size."""
    span = [int(kern.tap[..., a].max(initial=0)) for a in range(len(radius))]
    reach = int(np.prod([2 * (s * r + sp) + 1 for s, r, sp in zip(strides, radius, span)]))
    return max(c_in * c_out * reach * kern.weight.shape[1],
               c_out * c_out * int(np.prod([2 * r + 1 for r in radius])))


def _conv_field(ctx: RuleContext, z: str, depth: int, fit: bool):
    graph, known = ctx.graph, ctx.known
    found = conv_reading(graph, known, z)
    if found is None:
        return None
    node, x, w, shape_x, shape_z = found
    groups = shape_x[1] // w.shape[1]
    if groups < 1 or groups * w.shape[1] != shape_x[1] or w.shape[0] % groups:
        return None
    n = len(shape_z) - 2
    strides = attr(node, "strides") or [1] * n
    dilations = attr(node, "dilations") or [1] * n
    kern = dense_kernel(w, groups)
    for r in range(MAX_OFFSET, -1 if fit else MAX_OFFSET - 1, -1):
        radius = [min(r, s - 1) for s in shape_z[2:]]
        if cross_channel.affordable(shape_x[1], w.shape[0], kern, strides, dilations, radius) \
                or (fit and _transfer(shape_x[1], w.shape[0], kern, strides, radius) <= FIT_BUDGET):
            break
    else:
        return None
    field, nu = input_field(ctx, x, depth, fit)
    cov = cross_channel.conv_covariance(field, nu, kern, strides, dilations, radius)
    corr, var = cross_channel.normalised(cov)
    if np.any(var <= 0):
        return None
    mean = np.broadcast_to(known[z].values_along(1, shape_z[1])[0], (shape_z[1],))
    return corr, var, mean.astype(np.float64)


def _own_variance(ctx: RuleContext, z: str, shape_z, fns) -> float | None:
    """``sum_p sum_j Var g_j(z_j(p))`` over z's position classes."""
    sp = positions(ctx.known[z], shape_z)
    if sp is None:
        return None
    mu, nu = cell_arrays(sp, shape_z[1])
    weights = class_weights(sp.maps)
    total = 0.0
    for cell in np.ndindex(*weights.shape):
        found = coefficients(fns, np.ascontiguousarray(mu[(slice(None),) + cell]),
                             np.ascontiguousarray(nu[(slice(None),) + cell]), 1, len(shape_z))
        if found is None:
            return None
        total += weights[cell] * float(((found[0][1:] ** 2).sum(axis=0) + found[1]).sum())
    return total * float(np.prod(shape_z[2:]))


def map_mean_variance(ctx: RuleContext, axes: tuple[int, ...]) -> float | None:
    """The variance of the mean of the node's input 0 over its channels and every position
    (module docstring); None where it does not apply."""
    try:
        return _map_mean_variance(ctx, axes)
    except (RuleError, ValueError, TypeError, IndexError) as exc:
        fall_back(exc, (RuleError,))
        return None


def _map_mean_variance(ctx: RuleContext, axes: tuple[int, ...]) -> float | None:
    shape = ctx.graph.shape(ctx.node.input[0])
    if not shape or len(shape) < 3 or tuple(axes) != tuple(range(1, len(shape))):
        return None
    found = chain(ctx, ctx.node.input[0], axes)
    if found is None:
        return None
    z, fns = found
    shape_z = ctx.graph.shape(z)
    gauss = conv_field(ctx, z, DEPTH)
    if gauss is None or tuple(shape_z) != tuple(shape):
        return None
    corr, var, mean = gauss
    coeffs = coefficients(fns, mean, var, 1, len(shape))
    if coeffs is None:
        return None
    c, rem = coeffs
    radius = [(m - 1) // 2 for m in corr.shape[2:]]
    counts = np.ones(corr.shape[2:])
    for a, (r, s) in enumerate(zip(radius, shape[2:])):
        along = np.maximum(s - np.abs(np.arange(-r, r + 1)), 0).astype(np.float64)
        counts = counts * along.reshape([-1 if b == a else 1 for b in range(len(radius))])
    total = float((covariance_sum(c, rem, corr).sum(axis=(0, 1)) * counts).sum())
    own = float(((c[1:] ** 2).sum(axis=0) + rem).sum()) * float(np.prod(shape[2:]))
    spread = _own_variance(ctx, z, shape_z, fns)
    if spread is None or not (own > 0 and np.isfinite(total)):
        return None
    return max(total, 0.0) / own * spread / float(np.prod(shape[1:])) ** 2


__all__ = ["DEPTH", "conv_field", "input_field", "map_mean_variance"]
