"""The spatial correlation of an element-wise function's output (``onnxinit.correlation``
describes the model): Mehler's formula on the correlation of the Gaussian the function is
applied to, with the Hermite coefficients in closed form for ReLU / LeakyRelu and by quadrature
otherwise (Gauss-Hermite for smooth chains, a 768-node composite rule for kinked ones)."""

from __future__ import annotations

import numpy as np

from .. import correlation
from ..correlation import Correlation
from ..moments import Moments
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
    z (per channel): Mehler's formula on z's correlation; unchanged when y is an affine map
    of a Gaussian (no chain). ``smooth``: the chain has no kink (Gauss-Hermite suffices)."""
    src = y.source
    if src is None or not src.chain:
        return corr
    rho_z, floor_z = corr.gaussian()
    mean, var = np.broadcast_arrays(np.asarray(src.mean, np.float64),
                                    np.asarray(src.var, np.float64))
    keys = [f.key for f in src.chain]
    if keys == [("Relu",)] or (len(keys) == 1 and keys[0][0] == "LeakyRelu"):
        slope = 0.0 if keys[0] == ("Relu",) else float(keys[0][1])
        coeff = correlation.leaky_hermite_coefficients(slope, mean, np.sqrt(var))
    else:
        nodes, weights = quadrature(True) if smooth else (_Z, _W)
        coeff = correlation.hermite_coefficients(compose(src.chain), mean, np.sqrt(var),
                                                 nodes, weights)
    c = coeff.reshape(coeff.shape[0], -1)  # [8, C]: the pooled source is per channel
    channels = max(c.shape[1], rho_z.shape[0])
    rho_z = np.broadcast_to(rho_z, (channels,) + rho_z.shape[1:])
    floor_z = np.broadcast_to(floor_z, (channels,))
    c = np.broadcast_to(c, (c.shape[0], channels))
    return Correlation(correlation.mehler(c, rho_z), correlation.mehler(c, floor_z),
                       (rho_z, floor_z), corr.centred)


__all__ = ["elementwise_correlation"]
