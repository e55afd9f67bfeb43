"""The non-Gaussian covariance of distinct positions of ``f(z)``, z a depthwise Conv's output,
carried in the tensor's spatial correlation (so that the layers after it see it, not only a
global pool that reads ``f(z)`` directly).

Two outputs p, q of a depthwise Conv that read a common input u share its third and fourth
cumulants: for ``z = a sum_u W_pu x_u + b`` with inputs independent across positions,
``k(z_p, z_p, z_q) = a^3 sum_u k3_u W_pu^2 W_qu`` and ``k(z_p, z_p, z_q, z_q) = a^4 sum_u k4_u
W_pu^2 W_qu^2``. The first-order Edgeworth expansion of ``E[f(z_p) f(z_q)]`` adds to the
Gaussian (Mehler) covariance

    dCov(d) = 1/2 E f' E f'' [k(z_p, z_p, z_q) + k(z_p, z_q, z_q)] + 1/4 (E f'')^2 k(z_p, z_p, z_q, z_q)

(:mod:`.pool_skewness`, whose pooled sum over every pair is this), which on a stationary map,
q = p + d, reads the kernel's lags ``l = s d / dil``:

    dCov(d) = 1/2 E f' E f'' a^3 k3 (B3(l) + B3(-l)) + 1/4 (E f'')^2 a^4 k4 B4(l),
    B3(l) = sum_t W_t^2 W_(t+l),   B4(l) = sum_t W_t^2 W_(t+l)^2

with ``k3``, ``k4`` the conv input's cumulants averaged over its positions. ``rho(d)`` gains
``dCov(d) / nu`` at every d != 0 (nu: f's variance within a position) and the field is marked
(``Correlation.energy_pairs``), so that a global pool of it adds only the terms of each
position with itself. Why: a sample whose depthwise output has more energy in a channel has a
larger mean of ``f`` (convex) at every position of it; measured on MobileNetV3-small at 224
(16 batches of 8) the spatial-mean variance of the HardSwish after a depthwise conv is
1.28-1.36x that of its input (in units of nu / K), and this variance, not carried past the
pool, was missing from every later block: the residual stream's 1.0x predicted against 1.74x
measured by block 8, the squeeze-excite pools 0.63-0.8x.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref

import numpy as np

from ..deferred import DeferredCorrelation
from ..moments import Moments
from ..spatial import with_corr, within_variance
from .context import RuleContext, RuleError
from .elementwise import refinement
from .linear import begin_pads
from .pool_skewness import edgeworth_terms


@functools.lru_cache(maxsize=256)
def _axis_counts(n_in: int, n_out: int, stride: int, dilation: int, begin: int, k: int,
                 radius: int) -> np.ndarray:
    """``N[d, t, t']`` along one axis: the output positions o with o and o + d inside the
    output whose taps t and t' (of o and of o + d) read the same input position, inside;
    read-only, kept per geometry (whole numbers: the blocks of a network share a few)."""
    o = np.arange(n_out)
    out = np.zeros((2 * radius + 1, k, k))
    for i, d in enumerate(range(-radius, radius + 1)):
        valid = (o + d >= 0) & (o + d < n_out)
        for t in range(k):
            u = o * stride - begin + t * dilation
            inside = valid & (u >= 0) & (u < n_in)
            for t2 in range(k):
                out[i, t, t2] = np.count_nonzero(inside & (u == (o + d) * stride - begin
                                                           + t2 * dilation))
    out.flags.writeable = False
    return out


def pair_sums(weight, strides, dilations, begins, in_sizes, out_sizes, radius):
    """Per channel and offset d (|d_i| <= radius_i), the sums over the output pairs (p, p + d)
    of ``1/2 sum_u (W_pu^2 W_qu + W_pu W_qu^2)`` and of ``sum_u W_pu^2 W_qu^2``, each divided
    by the number of pairs: the kernel's share of ``1/2 (k(z_p, z_p, z_q) + k(z_p, z_q, z_q))``
    and ``k(z_p, z_p, z_q, z_q)`` per unit cumulant, the zero padding's missing taps counted
    exactly. ``[C, *(2 radius + 1)]`` each."""
    w = np.asarray(weight, np.float64)[:, 0]
    c, kernel = w.shape[0], w.shape[1:]
    n = len(kernel)
    flat, sq = w.reshape(c, -1), (w * w).reshape(c, -1)
    p3 = 0.5 * (sq[:, :, None] * flat[:, None, :] + flat[:, :, None] * sq[:, None, :])
    p4 = sq[:, :, None] * sq[:, None, :]
    counts = np.ones((1, 1, 1))  # [offsets so far, taps so far, taps so far]
    pairs = np.ones(1)
    for a in range(n):
        axis = _axis_counts(*(int(v[a]) for v in (in_sizes, out_sizes, strides, dilations,
                                                  begins, kernel, radius)))
        counts = np.einsum("dtu,eTU->detTuU", counts, axis).reshape(
            counts.shape[0] * axis.shape[0], counts.shape[1] * kernel[a],
            counts.shape[2] * kernel[a])
        d = np.arange(-radius[a], radius[a] + 1)
        pairs = np.multiply.outer(pairs, np.maximum(out_sizes[a] - np.abs(d), 0)).reshape(-1)
    shape = (c,) + tuple(2 * r + 1 for r in radius)
    safe = np.where(pairs > 0, pairs, 1.0)
    counts = counts.reshape(counts.shape[0], -1).T
    s3 = (p3.reshape(c, -1) @ counts) / safe
    s4 = (p4.reshape(c, -1) @ counts) / safe
    return s3.reshape(shape), s4.reshape(shape)


_MEMO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _conv_pair_sums(conv: RuleContext, t, radius):
    """:func:`pair_sums` of ``conv`` on ``radius``, once per graph and weights (the element-wise
    nodes of one chain, SiLU's Sigmoid and Mul, read the same)."""
    memo = _MEMO.setdefault(conv.graph, {})
    weight = np.asarray(conv.const(1), np.float64)
    # the weights in the key: a rescale's later pass changes them
    key = (conv.node_id, tuple(radius), t.in_shape, t.out_shape, hash(weight.tobytes()))
    if key not in memo:
        n = len(t.out_shape) - 2
        kernel = list(np.shape(weight)[2:])
        strides = list(conv.attr("strides", [1] * n))
        dilations = list(conv.attr("dilations", [1] * n))
        begins = begin_pads(conv, t.in_shape[2:], t.out_shape[2:], kernel, strides, dilations)
        memo[key] = pair_sums(weight, strides, dilations, begins, t.in_shape[2:],
                              t.out_shape[2:], radius)
    return memo[key]


def _within(t, radius) -> bool:
    """Every pair of outputs that read a common input is at an offset the field keeps (a
    dilated kernel reaches beyond ``MAX_OFFSET``: then the pool adds all its pairs itself)."""
    conv = t.conv
    kernel = np.shape(conv.const(1))[2:]
    n = len(kernel)
    strides = conv.attr("strides", [1] * n)
    dilations = conv.attr("dilations", [1] * n)
    return all(dl * (k - 1) // s <= r or r >= size - 1 for k, s, dl, r, size
               in zip(kernel, strides, dilations, radius, t.out_shape[2:]))


_POOLS = {"GlobalAveragePool", "ReduceMean"}
_CHAIN = {"Sigmoid", "HardSigmoid", "Mul", "Div", "Add", "Sub", "Clip", "Relu", "HardSwish"}


def _pooled(graph, name: str, steps: int = 4) -> bool:
    """A global pool reads ``name`` or the end of its element-wise chain (SiLU's Sigmoid is
    read by the Mul the pool reads)."""
    frontier = [name]
    for _ in range(steps):
        nodes = [graph.node(n) for t in frontier for n, _ in graph.consumers.get(t, [])]
        if any(node.op_type in _POOLS for node in nodes):
            return True
        frontier = [node.output[0] for node in nodes if node.op_type in _CHAIN]
    return False


@refinement
def paired(y: Moments, ctx: RuleContext) -> Moments:
    """``y`` with :func:`pair_covariance` in its correlation when it is ``f(z)`` of a depthwise
    Conv's output z (:func:`.pool_skewness.edgeworth_terms`); ``y`` itself otherwise."""
    sp = y.spatial
    # a correlation not computed yet (a SiLU's Sigmoid's, which may never be read) says its
    # radius: its pair terms are added when it is
    given = sp.given if sp is not None else None
    if given is None or given.energy_pairs or ctx.known is None:
        return y
    try:
        shape = tuple(ctx.out_shape(0))
    except RuleError:
        return y
    graph, name = ctx.graph, ctx.node.output[0]
    # the conv input's cumulants per position class where a global pool reads this tensor
    # (it needs them: memoised), else pooled per channel (their mean over positions is all
    # the field needs, and per class they cost ~100 quadrature nodes per cell)
    t = edgeworth_terms(ctx, name, y, shape, per_class=_pooled(graph, name))
    if t is None:
        return y
    c = shape[1]
    n = len(shape) - 2
    if not _within(t, given.radius):
        return y
    s3, s4 = _conv_pair_sums(t.conv, t, given.radius)
    k3, k4 = t.k3.mean(axis=1), t.k4.mean(axis=1)
    b = (-1,) + (1,) * n
    extra = ((t.d1 * t.d2 * t.a**3 * k3).reshape(b) * s3
             + (0.25 * t.d2**2 * t.a**4 * k4).reshape(b) * s4)
    extra[(slice(None), *given.radius)] = 0.0  # a position with itself: the pool's term
    nu = within_variance(sp, c)
    if not (np.all(np.isfinite(extra)) and np.all(nu > 0)):
        return y
    if isinstance(given, DeferredCorrelation):
        return with_corr(y, DeferredCorrelation(
            lambda: _with_pairs(given.get(), extra, nu, c, b), given.radius, True), sp.maps)
    return with_corr(y, _with_pairs(given, extra, nu, c, b), sp.maps)


def _with_pairs(corr, extra: np.ndarray, nu: np.ndarray, c: int, b: tuple):
    """``corr`` with the pair covariance ``extra`` (over the variance ``nu``) in its rho."""
    rho = np.broadcast_to(corr.rho, (c,) + corr.rho.shape[1:])
    new = np.clip(rho + extra / nu.reshape(b), -1.0, 1.0)
    return dataclasses.replace(corr, rho=new, energy_pairs=True)


__all__ = ["pair_sums", "paired"]
