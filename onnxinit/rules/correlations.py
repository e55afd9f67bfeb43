"""The spatial correlation of an element-wise function's output (``onnxinit.correlation``
describes the model): Mehler's formula on the correlation of the Gaussian the function is
applied to, with the Hermite coefficients in closed form for ReLU / LeakyRelu and piecewise polynomials
(HardSwish, HardSigmoid, Clip...) and by quadrature otherwise (Gauss-Hermite for smooth chains, a 768-node composite rule for kinked ones)."""

from __future__ import annotations

import math

import numpy as np

from .. import mehler
from ..correlation import Correlation
from ..deferred import DeferredCorrelation, resolved
from ..moments import Elementwise, Moments
from ..spatial import class_weights, within_variance
from ..views import broadcast_to
from . import cross_fields, piecewise, smooth_quadrature
from .gaussian import compose, composite_rule, quadrature

_L = 10.0  # the composite rules' range of z, as in .gaussian

# a coarser composite rule (256 panels of 3 nodes) than the moments' for the 8 Hermite
# coefficients of a kinked function
_Z, _W = composite_rule(_L, 256, 3)


def elementwise_correlation(corr: Correlation, y: Moments, smooth: bool, fn=None,
                            x: Moments | None = None) -> Correlation:
    """The correlation of ``y = h(z)`` element-wise, h the chain of y's source on its Gaussian
    z: Mehler's formula on z's correlation with the Hermite amplitudes of each position class
    (its own Gaussian: border cells differ) averaged over the classes, divided by y's variance
    within a position; unchanged when y is an affine map of a Gaussian (no chain).
    ``smooth``: the chain has no kink (Gauss-Hermite suffices). ``fn`` (an Elementwise, not
    affine) and ``x``, its input's cells: y = fn(x) where y carries no chain (x a Gaussian
    mixture, such as a residual sum of a ReLU and a Gaussian): the correlation is kept and
    only the batch-centred fraction is carried, with x taken as Gaussian."""
    return resolved(deferred_correlation(corr, y, smooth, fn, x))


def deferred_correlation(corr: Correlation, y: Moments, smooth: bool, fn=None,
                         x: Moments | None = None) -> Correlation | DeferredCorrelation:
    """:func:`elementwise_correlation`, through a chain a
    :class:`~onnxinit.deferred.DeferredCorrelation` of Mehler's formula (z's radius): the
    amplitudes (which the smooth quadrature's last calls may hold,
    :func:`.smooth_quadrature.recall`) are found now, the rest when it is read (a SiLU's
    Sigmoid, whose fused Mul reads its input, is never read)."""
    cells = y.spatial.cells if y.spatial is not None else y
    src = cells.source
    if src is None or not src.chain:
        if fn is not None and x is not None:  # a sampled residual sum's joint law
            corr = cross_fields.through_joint(corr, x, fn, y.spatial)
        if fn is not None and x is not None and corr.centred is not None:
            return _centred_through_mixture(corr, y, x, fn)
        return corr
    rho_z, floor_z = corr.gaussian()
    rank = cells.mean.ndim
    shape = np.broadcast_shapes(np.shape(src.mean), np.shape(src.var), cells.mean.shape)
    mean = np.broadcast_to(np.reshape(src.mean, (1,) * (rank - np.ndim(src.mean))
                                      + np.shape(src.mean)), shape)
    var = np.broadcast_to(np.reshape(src.var, (1,) * (rank - np.ndim(src.var))
                                     + np.shape(src.var)), shape)
    channels = max(shape[1], rho_z.shape[0])
    amp = _class_amplitudes(src.chain, mean, var, smooth, y, shape, channels)
    amp = broadcast_to(amp, (amp.shape[0], channels))
    basis = None
    if corr.centred is not None:
        basis = _centred_basis(corr, src.chain, mean, var, smooth, y, shape, channels)
    return DeferredCorrelation(
        lambda: _through_mehler(corr, y, channels, amp, basis, rho_z, floor_z), corr.radius)


def _through_mehler(corr: Correlation, y: Moments, channels: int, amp: np.ndarray, basis,
                    rho_z: np.ndarray, floor_z: np.ndarray) -> Correlation:
    """The rest of :func:`deferred_correlation` from the amplitudes ``amp`` ``[8, channels]``
    (and the centred fraction's ``basis``, None without one)."""
    cells = y.spatial.cells if y.spatial is not None else y
    if y.spatial is not None:
        variance = within_variance(y.spatial, channels)
    else:
        variance = np.broadcast_to(np.reshape(cells.var, (-1,)), (channels,))
    variance = broadcast_to(variance, (channels,))
    rho_z = broadcast_to(rho_z, (channels,) + rho_z.shape[1:])
    floor_z = broadcast_to(floor_z, (channels,))
    rho = mehler.mehler(amp, variance, rho_z)
    rho[(slice(None), *corr.radius)] = 1.0
    centred = corr.centred
    if centred is not None:
        centred = corr.batch_centred(channels) * centred_share(basis, amp, rho_z)
    out = Correlation(rho, mehler.mehler(amp, variance, floor_z), (rho_z, floor_z),
                      centred)
    return cross_fields.elementwise(corr, amp, variance, out)


def _centred_through_mixture(corr: Correlation, y: Moments, x: Moments, fn) -> Correlation:
    """``corr`` with the centred fraction of fn(x), x's cells taken as Gaussian with their
    moments and the correlation ``corr.rho`` (:func:`centred_share`); composite quadrature."""
    rank = x.mean.ndim
    shape = np.broadcast_shapes(np.shape(x.mean), np.shape(x.var))
    mean, var = np.broadcast_to(x.mean, shape), np.broadcast_to(x.var, shape)
    channels = max(shape[1] if rank > 1 else 1, corr.rho.shape[0])
    inner = _per_channel(_amplitudes((), mean, var, False), y, shape, channels)
    outer = _per_channel(_amplitudes((fn,), mean, var, False), y, shape, channels)
    share = centred_share([inner], outer, np.broadcast_to(
        corr.rho, (channels,) + corr.rho.shape[1:]))
    return corr.with_centred(corr.batch_centred(channels) * share)


def _amplitudes(chain, mean, var, smooth: bool) -> np.ndarray:
    """a_n = E[h(mean + std z) He_n(z)], n = 1..8, of the chain h (``[8, *shape]``): closed
    form for one ReLU / LeakyRelu, a piecewise-polynomial function (HardSwish, HardSigmoid) or
    chain (:mod:`.piecewise`: affine maps, Clip, HardSwish written out), for the identity (a_1 = std) and the square (a_1 =
    2 mean std, a_2 = 2 var), else quadrature."""
    keys = [f.key for f in chain]
    if not keys or keys == [("Square",)]:  # x = m + s z; x^2 = m^2 + 2 m s z + s^2 (He_2 + 1)
        amp = np.zeros((8,) + np.shape(mean))
        amp[0] = np.sqrt(var) * (2 * mean if keys else 1.0)
        if keys:
            amp[1] = 2 * var
        return amp
    if keys == [("Relu",)] or (len(keys) == 1 and keys[0][0] == "LeakyRelu"):
        slope = 0.0 if keys[0] == ("Relu",) else float(keys[0][1])
        return mehler.leaky_hermite_amplitudes(slope, mean, np.sqrt(var))
    pieces = chain[0].pieces if len(chain) == 1 and chain[0].pieces is not None \
        else piecewise.chain_pieces(keys)
    if pieces is not None:  # HardSwish, HardSigmoid, affine maps, ReLU6 / Clip, written-out
        return mehler.piecewise_hermite_amplitudes(pieces, mean, np.sqrt(var))
    if smooth:  # the moment rule's quadrature found them already
        kept = smooth_quadrature.recall(tuple(keys), mean, var)
        if kept is not None:
            return kept
    nodes, weights = quadrature(True) if smooth else (_Z, _W)
    return mehler.hermite_amplitudes(compose(chain), mean, np.sqrt(var), nodes, weights)


def chain_amplitudes(chain, mean, var) -> np.ndarray:
    """a_n = E[h(mean + std z) He_n(z)], n = 1..8, of the chain h (``[8, *shape]``), by the
    closed forms of :func:`_amplitudes` or the composite rule (kinks allowed)."""
    return _amplitudes(chain, mean, var, False)


def _class_amplitudes(chain, mean, var, smooth: bool, y: Moments, shape,
                      channels: int) -> np.ndarray:
    """``_per_channel(_amplitudes(...))``; for one ReLU / LeakyRelu on position classes, a
    block of channels at a time (:func:`.mehler.leaky_hermite_class_means`: the same values)."""
    keys = [f.key for f in chain]
    if y.spatial is not None and len(keys) == 1 and (
            keys[0] == ("Relu",) or keys[0][0] == "LeakyRelu") and shape[0] == 1:
        w = class_weights(y.spatial.maps)
        if tuple(shape[2:]) == w.shape:
            slope = 0.0 if keys[0] == ("Relu",) else float(keys[0][1])
            amp = mehler.leaky_hermite_class_means(slope, mean, np.sqrt(var), w)
            return broadcast_to(amp, (amp.shape[0], channels))
    return _per_channel(_amplitudes(chain, mean, var, smooth), y, shape, channels)


def _per_channel(amp: np.ndarray, y: Moments, shape, channels: int) -> np.ndarray:
    """``[8, channels]``: the amplitudes averaged over the position classes, weighted by
    their size."""
    if y.spatial is not None:
        w = class_weights(y.spatial.maps)
        amp = (np.broadcast_to(amp, amp.shape[:2] + (shape[1],) + w.shape)[:, 0]
               * w).reshape(amp.shape[0], shape[1], -1).sum(axis=-1)
    else:
        amp = amp.reshape(amp.shape[0], -1)
    return np.broadcast_to(amp, (amp.shape[0], channels))


def _centred_basis(corr: Correlation, chain, mean, var, smooth: bool, y: Moments, shape,
                   channels: int) -> list[np.ndarray]:
    """The amplitudes that y = f(x)'s batch-centred fraction (``Correlation.batch_centred``)
    is projected on: x = g(z) with g the chain but its last function, the part of y's
    spatial-mean variance that moves with what BatchNorm centred (:func:`centred_share`).
    Straight after a BatchNorm (``corr.normalized``) that is x's spatial mean and that of its
    square: the normalization fixes both moments over the batch and the positions."""
    inner = chain[:-1]
    basis = [_per_channel(_amplitudes(inner, mean, var, smooth), y, shape, channels)]
    if corr.normalized:
        square = (Elementwise(("Square",), np.square),)
        basis.append(_per_channel(_amplitudes(inner + square, mean, var, smooth), y, shape,
                                  channels))
    return basis


def centred_share(basis, outer: np.ndarray, rho_z: np.ndarray) -> np.ndarray:
    """The share of the variance of a sample's spatial mean of ``y = h(z)`` that is a linear
    function of the spatial means of ``u_i = g_i(z)``, per channel, for one Gaussian field z
    with correlation rho_z; ``basis`` the Hermite amplitudes a_n(g_i) ``[8, C]``, ``outer``
    a_n(h).

    BatchNorm centres its output's sample means over the batch (and, with them, those of its
    square); a function of them keeps only its regression on them centred, the rest (the
    Hermite components uncorrelated with them) varies freely from sample to sample. By
    Mehler's formula Cov(M_u, M_v) is proportional to <u, v> = sum_n a_n(u) a_n(v) R_n / n!,
    R_n = sum_d rho_z(d)^n over the stored offsets, so with the Gram matrix G_ij = <g_i, g_j>
    and c_i = <g_i, h>::

        share = c^T G^+ c / <h, h>

    For one u, x itself (g affine): a_1(h)^2 R_1 / <h, h>, only f's linear part keeps x's
    centring; 1 when f is affine."""
    flat = rho_z.reshape(rho_z.shape[0], -1)
    power, r = np.ones_like(flat), []
    for k in range(outer.shape[0]):
        power = power * flat
        r.append(power.sum(axis=1) / math.factorial(k + 1))
    r = np.stack(r)  # [8, C or 1]
    basis = np.stack(basis)  # [B, 8, C]
    gram = np.einsum("inc,jnc,nc->cij", basis, basis, r)
    c = np.einsum("inc,nc,nc->ci", basis, outer, r)
    own = (outer * outer * r).sum(axis=0)
    explained = np.einsum("ci,cij,cj->c", c, np.linalg.pinv(gram, rcond=1e-10), c)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(own > 0, explained / np.where(own > 0, own, 1.0), 0.0)
    return np.clip(share, 0.0, 1.0)


__all__ = ["centred_share", "chain_amplitudes", "deferred_correlation", "elementwise_correlation"]
