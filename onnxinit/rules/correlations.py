"""The spatial correlation of an element-wise function's output (``onnxinit.correlation``
describes the model): Mehler's formula on the correlation of the Gaussian the function is
applied to, with the Hermite coefficients in closed form for ReLU / LeakyRelu and by quadrature
otherwise (Gauss-Hermite for smooth chains, a 768-node composite rule for kinked ones)."""

from __future__ import annotations

import numpy as np

from .. import correlation
from ..correlation import Correlation
from ..moments import Moments
from ..spatial import class_weights, within_variance
from . import cross_fields
from .gaussian import compose, quadrature

_L = 10.0  # the composite rules' range of z, as in .gaussian

# a coarser composite rule (256 panels of 3 nodes) than the moments' for the 8 Hermite
# coefficients of a kinked function
_g, _gw = np.polynomial.legendre.leggauss(3)
_edges = np.linspace(-_L, _L, 257)
_h = _edges[1] - _edges[0]
_Z = (_edges[:-1, None] + _h / 2 * (_g[None, :] + 1)).ravel()
_W = np.tile(_gw * _h / 2, 256) * np.exp(-0.5 * _Z**2) / np.sqrt(2 * np.pi)
_W /= _W.sum()
del _g, _gw, _edges, _h


def elementwise_correlation(corr: Correlation, y: Moments, smooth: bool) -> Correlation:
    """The correlation of ``y = h(z)`` element-wise, h the chain of y's source on its Gaussian
    z: Mehler's formula on z's correlation with the Hermite amplitudes of each position class
    (its own Gaussian: border cells differ) averaged over the classes, divided by y's variance
    within a position; unchanged when y is an affine map of a Gaussian (no chain).
    ``smooth``: the chain has no kink (Gauss-Hermite suffices)."""
    cells = y.spatial.cells if y.spatial is not None else y
    src = cells.source
    if src is None or not src.chain:
        return corr
    rho_z, floor_z = corr.gaussian()
    rank = cells.mean.ndim
    shape = np.broadcast_shapes(np.shape(src.mean), np.shape(src.var), cells.mean.shape)
    mean = np.broadcast_to(np.reshape(src.mean, (1,) * (rank - np.ndim(src.mean))
                                      + np.shape(src.mean)), shape)
    var = np.broadcast_to(np.reshape(src.var, (1,) * (rank - np.ndim(src.var))
                                     + np.shape(src.var)), shape)
    keys = [f.key for f in src.chain]
    if keys == [("Relu",)] or (len(keys) == 1 and keys[0][0] == "LeakyRelu"):
        slope = 0.0 if keys[0] == ("Relu",) else float(keys[0][1])
        amp = correlation.leaky_hermite_amplitudes(slope, mean, np.sqrt(var))
    else:
        nodes, weights = quadrature(True) if smooth else (_Z, _W)
        amp = correlation.hermite_amplitudes(compose(src.chain), mean, np.sqrt(var), nodes,
                                             weights)
    channels = max(shape[1], rho_z.shape[0])
    if y.spatial is not None:  # average over the position classes, weighted by their size
        w = class_weights(y.spatial.maps)
        amp = (np.broadcast_to(amp, amp.shape[:2] + (shape[1],) + w.shape)[:, 0]
               * w).reshape(amp.shape[0], shape[1], -1).sum(axis=-1)
        variance = within_variance(y.spatial, channels)
    else:
        amp = amp.reshape(amp.shape[0], -1)
        variance = np.broadcast_to(np.reshape(cells.var, (-1,)), (channels,))
    amp = np.broadcast_to(amp, (amp.shape[0], channels))
    variance = np.broadcast_to(variance, (channels,))
    rho_z = np.broadcast_to(rho_z, (channels,) + rho_z.shape[1:])
    floor_z = np.broadcast_to(floor_z, (channels,))
    rho = correlation.mehler(amp, variance, rho_z)
    rho[(slice(None), *corr.radius)] = 1.0
    out = Correlation(rho, correlation.mehler(amp, variance, floor_z), (rho_z, floor_z),
                      corr.centred)
    return cross_fields.elementwise(corr, amp, variance, out)


__all__ = ["elementwise_correlation"]
