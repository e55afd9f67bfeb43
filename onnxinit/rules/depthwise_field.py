"""Each channel's own correlation across positions through depthwise Convs (one input channel per
output channel), without the cross-channel field (:func:`.map_means.conv_field`, whose cost
``C_in C_out`` per tap pair drops it past ``FIELD_BUDGET``).

A depthwise kernel ``w_j`` on its channel's input (variance ``nu_j``, correlation ``r_j(e)``)::

    Cov(z_j(p), z_j(p + d)) = nu_j sum_delta A_j(delta) r_j(s d + dil delta),
    A_j(delta) = sum_{t - t' = delta} w_jt w_jt'     (the kernel's autocorrelation)

(``r_j`` zero beyond the offsets it stores). The input's ``r_j``: an element-wise chain ``g`` of
an earlier depthwise Conv's output (up to ``DEPTH`` back; GELU written out included), whose own
``R_j`` goes through Mehler's formula, ``r_j = sum_k c_jk^2 R_j^k / sum_k c_jk^2``; otherwise
the correlation the input carries (each channel's own, or the diagonal of its cross-channel
field; none: independent positions). Positions are taken as stationary (the interior).
"""

from __future__ import annotations

import numpy as np

from ..correlation import MAX_OFFSET
from ..spatial import positions
from .context import RuleContext
from .correlated_means import coefficients
from .covariance_layout import attr, conv_reading, within

DEPTH = 3
MAX_RADIUS = 48  # offsets per axis beyond which the field is not followed


def carried(ctx: RuleContext, x: str, shape, radius) -> np.ndarray:
    """``[C, 2R+1, ...]``: the input's own correlation per channel as carried."""
    c = shape[1]
    out = np.zeros((c,) + tuple(2 * r + 1 for r in radius))
    centre = (slice(None),) + tuple(radius)
    sp = positions(ctx.known[x], shape)
    rho = None
    if sp is not None and sp.corr is not None:
        if sp.corr.cross is not None:
            full = sp.corr.cross.corr
            rho = full[np.arange(c), np.arange(c)]
        else:
            rho = np.broadcast_to(sp.corr.rho, (c,) + sp.corr.rho.shape[1:])
    if rho is None:
        out[centre] = 1.0
        return out
    have = [(m - 1) // 2 for m in rho.shape[1:]]
    src = (slice(None),) + tuple(slice(max(h - r, 0), h + min(r, h) + 1) for h, r in zip(have, radius))
    dst = (slice(None),) + tuple(slice(max(r - h, 0), r + min(r, h) + 1) for h, r in zip(have, radius))
    out[dst] = rho[src]
    return out


def _input_field(ctx: RuleContext, x: str, shape, radius, depth: int, chain_of):
    """(``r`` ``[C, 2R+1, ...]``, ``nu`` ``[C]``) of a depthwise Conv's input."""
    if depth > 0:
        found = chain_of(ctx, x)
        if found is not None:
            inner = field(ctx, found[0], depth - 1, chain_of, radius)
            if inner is not None:
                rho, var, mean = inner
                coeffs = coefficients(found[1], mean, var, 1, len(shape))
                if coeffs is not None:
                    c, rem = coeffs
                    own = (c[1:] ** 2).sum(axis=0) + rem
                    if np.all(own > 0):
                        extra = rho.ndim - 1
                        r = np.zeros_like(rho)
                        power = np.ones_like(rho)
                        for k in range(1, c.shape[0]):
                            power = power * rho
                            r += (c[k] ** 2).reshape((-1,) + (1,) * extra) * power
                        r += rem.reshape((-1,) + (1,) * extra) * power * rho
                        return r / own.reshape((-1,) + (1,) * extra), own
    return carried(ctx, x, shape, radius), within(ctx.known[x], shape)


def field(ctx: RuleContext, z: str, depth: int, chain_of, radius=None):
    """(``R`` ``[C, 2R+1, ...]`` each channel's correlation, variance ``[C]``, mean ``[C]``) of a
    depthwise Conv's output ``z`` in the interior; None where z is no such Conv's output.
    ``chain_of(ctx, t)`` -> (z', [f...]) or None follows element-wise chains back."""
    known = ctx.known
    found = conv_reading(ctx.graph, known, z, depthwise=True)
    if found is None:
        return None
    node, x, w, shape_x, shape_z = found
    c = shape_z[1]
    n = len(shape_z) - 2
    strides = attr(node, "strides") or [1] * n
    dilations = attr(node, "dilations") or [1] * n
    if radius is None:
        radius = [min(MAX_OFFSET, s - 1) for s in shape_z[2:]]
    if max(radius) > MAX_RADIUS:
        return None
    taps = w.shape[2:]
    # the input offsets read: s d + dil delta
    in_radius = [s * r + dl * (k - 1) for s, r, dl, k in zip(strides, radius, dilations, taps)]
    r_in, nu = _input_field(ctx, x, shape_x, in_radius, depth, chain_of)
    kernel = w[:, 0]
    # A_j(delta), delta in [-(k-1), k-1] per axis
    auto = np.zeros((c,) + tuple(2 * k - 1 for k in taps))
    for t in np.ndindex(*taps):
        for u in np.ndindex(*taps):
            delta = tuple(a - b + k - 1 for a, b, k in zip(t, u, taps))
            auto[(slice(None),) + delta] += kernel[(slice(None),) + t] * kernel[(slice(None),) + u]
    cov = np.zeros((c,) + tuple(2 * r + 1 for r in radius))
    for delta in np.ndindex(*auto.shape[1:]):
        # input offset e = s (d - r) + dil (delta - k + 1), stored at e + in_radius
        index = tuple(slice(st * 0 + ir - st * r + dl * (dd - k + 1),
                            ir - st * r + dl * (dd - k + 1) + st * 2 * r + 1, st)
                      for st, r, ir, dl, dd, k in zip(strides, radius, in_radius, dilations,
                                                      delta, taps))
        cov += auto[(slice(None),) + delta].reshape((-1,) + (1,) * n) * r_in[(slice(None),) + index]
    cov *= nu.reshape((-1,) + (1,) * n)
    var = cov[(slice(None),) + tuple(radius)].copy()
    if np.any(var <= 0):
        return None
    corr = cov / var.reshape((-1,) + (1,) * n)
    mean = np.broadcast_to(known[z].values_along(1, c)[0], (c,)).astype(np.float64)
    return corr, var, mean


__all__ = ["DEPTH", "carried", "field"]
