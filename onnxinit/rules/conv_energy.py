"""The Conv rule of :mod:`.sample_energy`: the shared energy a conv seeds from the realized
energies its output channels read in common, the local fluctuation and the batch-level one
(:mod:`.batch_energy`) it passes on, and the offsets its taps carry (formulas:
:mod:`.sample_energy`)."""

from __future__ import annotations

import numpy as np

from .batch_energy import carried
from .context import RuleContext
from .energy_loading import conv_loading
from .energy_fields import channel_var, gaussian_local
from .conv_geometry import begin_pads


def channel_shape(graph, name: str):
    """The static shape of ``name`` with a channel axis (at least 2 axes), else None."""
    shape = graph.shape(name)
    return None if not shape or len(shape) < 2 else tuple(int(s) for s in shape)


def conv_law(conv: RuleContext, known, of, shape):
    """(eta, lam, alpha, factors, omega, loading) of the Conv of ``conv`` (output ``shape``) from its
    input's, ``of(name, channels)`` (:mod:`.sample_energy`'s Conv rule); None without a
    constant weight."""
    weight = conv.const(1)
    x = conv.node.input[0]
    x_shape = channel_shape(conv.graph, x)
    j = shape[1]
    if weight is None or x_shape is None or weight.shape[0] != j:
        return None
    cin = x_shape[1]
    group = int(conv.attr("group", 1))
    per = cin // group
    eta_x, lam_x, alpha_x, factors, omega_x, load_x = of(x, cin)
    nu = channel_var(known[x], cin)
    weight = np.asarray(weight, np.float64).reshape(j, per, -1)
    idx = (np.arange(j) // (j // group))[:, None] * per + np.arange(per)[None]  # [J, I/g]

    def at(a):  # a[idx]: one group reads every channel, a row broadcast (the same values)
        return a[None, :] if group == 1 else a[idx]

    if weight.shape[2] == 1:  # one tap: its square is the sum over taps
        share = np.square(weight[:, :, 0])
        share *= at(nu)
    else:
        share = np.square(weight)
        share *= at(nu)[..., None]
        share = share.sum(axis=2)
    total = share.sum(axis=1, keepdims=True)
    b = np.where(total > 0, share / np.where(total > 0, total, 1.0), 0.0)  # B_jc, [J, I/g]
    b2 = b * b
    s = np.bincount(idx.ravel(), b.ravel(), minlength=cin)
    q = np.bincount(idx.ravel(), b2.ravel(), minlength=cin)
    seeded = float((lam_x * (s * s - q)).sum() / (j * (j - 1))) if j > 1 else 0.0
    # the channels load on eta unequally and B favours some (.energy_loading)
    whole = eta_x + sum(f[0] for f in factors.values())
    grown, load, moved = conv_loading(b, idx, load_x, whole, lam_x, s)
    excess = lam_x - gaussian_local(known[x], x_shape)
    lam = gaussian_local(known[conv.node.output[0]], shape) + (b2 * at(excess)).sum(axis=1)
    omega = carried((b2 * at(omega_x)).sum(axis=1), (b2 * at(lam_x)).sum(axis=1), lam,
                    shape[0])
    inside = _inside(conv, x_shape, shape).reshape(-1)
    if inside.size == 1 and inside[0] == 1.0:  # one tap, always inside: w * 1
        taps = weight[:, :, 0]
    else:
        taps = (weight * inside.reshape(1, 1, -1)).sum(axis=2)
    alpha = (taps * at(alpha_x)).sum(axis=1)
    # every factor loads as l (.energy_loading): its eps moves by mean(L), its eta by kappa
    moved_by = moved if moved > 0 else 1.0
    factors = {k: (e * grown, (taps * at(a)).sum(axis=1) / moved_by, p)
               for k, (e, a, p) in factors.items()}
    # alpha is a regression on eps: the seeded part is independent of the offsets (it joins
    # eta_0: as its own factor it would add in quadrature at the residual sums, which lowers
    # the pools where the projection convs' seeds are already missing, module docstring)
    eta = eta_x * grown + seeded
    if eta > 0 and eta != eta_x:  # the regression on the output's eps, mean(L) eps_x + seed
        alpha = alpha * eta_x * moved / eta
    return eta, lam, alpha, factors, omega, load


def _inside(conv: RuleContext, x_shape, y_shape) -> np.ndarray:
    """Per tap, the fraction of the output positions at which it reads inside the input (not
    the zero padding): how much of a shift of every input position reaches the output's mean."""
    kernel = list(conv.const(1).shape[2:])
    n = len(kernel)
    strides = list(conv.attr("strides", [1] * n))
    dilations = list(conv.attr("dilations", [1] * n))
    begins = begin_pads(conv, x_shape[2:], y_shape[2:], kernel, strides, dilations)
    out = np.ones(())
    for d in range(n):
        pos = (np.arange(y_shape[2 + d])[:, None] * strides[d] - begins[d]
               + np.arange(kernel[d])[None, :] * dilations[d])
        frac = ((pos >= 0) & (pos < x_shape[2 + d])).mean(axis=0)
        out = np.multiply.outer(out, frac)
    return out


__all__ = ["channel_shape", "conv_law"]
