"""The cross terms of two taps on one input channel in a convolution's output variance, per
position class: what a ConvTranspose reads from its input's spatial correlation.

For output channel j and position class r (taps in the padding, or on the zeros of a
ConvTranspose's zero-upsampled input, read nothing)::

    Var_j(r) = sum_{c in group(j)} sum_{t, t'} W_jct W_jct' sd_c(r, t) sd_c(r, t')
               rho_c(dil (t' - t))

with ``sd_c(r, t)`` the standard deviation of the input class under tap t and ``rho_c`` the
input's per-channel correlation (channels taken as independent of each other). The terms
``t = t'`` are the independent inputs' variance that the Conv rule computes; this adds the
others. Over random weights they have mean zero (the Conv rule leaves them out), but not for
a structured kernel: a bilinear upsampling kernel (FCN's initialisation, all weights positive)
of a smooth map has 2-5x the independent inputs' variance.

Cost: ``C_out C_in/g P R`` multiply-adds for the P pairs of taps at whose lag rho is not zero
(a stride s ConvTranspose meets real inputs at lags that are multiples of s only) over R
classes; over ``BUDGET`` the variance stays the independent inputs' (wide random layers,
where the expected cross terms are zero).
"""

from __future__ import annotations

import numpy as np

from ..correlation import Correlation, recentred
from ..spatial import gather_taps

BUDGET = 1e7


def pair_variance(corr: Correlation | None, nu_cells: np.ndarray, w: np.ndarray, groups: int,
                  taps, dilations, var: np.ndarray) -> np.ndarray:
    """``var`` ``[C_out, R...]`` (the independent inputs' variance per class) plus the cross
    terms of distinct taps on one channel (module docstring); ``var`` itself without a
    correlation, for a one-tap kernel or over the budget."""
    if corr is None:
        return var
    c_out, cpg = w.shape[:2]
    kernel = w.shape[2:]
    n = len(kernel)
    tap_index = np.array(list(np.ndindex(*kernel)))
    first, second = np.nonzero(~np.eye(len(tap_index), dtype=bool))
    if first.size == 0:
        return var
    lags = (tap_index[second] - tap_index[first]) * np.asarray(dilations)
    radius = [int(np.abs(lags[:, a]).max()) for a in range(n)]
    ext = recentred(corr.rho, 1, radius, np.reshape(corr.floor, -1))
    rho = ext[(slice(None),) + tuple(lags[:, a] + radius[a] for a in range(n))]  # [C or 1, P]
    used = np.flatnonzero(np.any(rho != 0, axis=0))
    classes = int(np.prod([t.shape[0] for t in taps]))
    if used.size == 0 or c_out * cpg * used.size * classes > BUDGET:
        return var
    first, second, rho = first[used], second[used], rho[:, used]
    c_in = cpg * groups
    sd = gather_taps(np.sqrt(np.asarray(nu_cells, np.float64)), taps)
    sd = sd.reshape(c_in, len(tap_index), classes)  # [C_in, T, R]
    b = sd[:, first] * sd[:, second] * np.broadcast_to(rho, (c_in, used.size))[..., None]
    flat = w.reshape(c_out, cpg, -1)
    a = flat[:, :, first] * flat[:, :, second]  # [C_out, cpg, P]
    opg = c_out // groups
    cross = a.reshape(groups, opg, cpg * used.size) @ b.reshape(groups, cpg * used.size, classes)
    return np.maximum(var + cross.reshape(var.shape), 0.0)


__all__ = ["BUDGET", "pair_variance"]
