"""BatchNormalization's running-statistic outputs in training mode (outputs 1 and 2).

Per channel c, with the batch mean ``m_c`` and the batch (population) variance ``v_c`` over the
N x spatial elements of the channel, ONNX updates

    running_mean'_c = momentum running_mean_c + (1 - momentum) m_c
    running_var'_c  = momentum running_var_c  + (1 - momentum) v_c

Each output is a ``[C]`` vector: its moments are those of its values across channels. With
``mu_c``, ``nu_c`` the channel's predicted mean and variance, ``u_c`` the variance of one
sample's spatial mean (the spatial correlation counted) and ``k_c`` the part of it that is
centred over the batch (``Correlation.batch_centred``: a sum or 1x1 conv of batch-normalized
tensors has a batch mean fixed exactly, whatever the samples):

    E[m_c] = mu_c,           Var[m_c] = u_c (1 - k_c) / N
    E[v_c] = nu_c - Var[m_c], Var[v_c] = 2 nu_c^2 / n_eff,  n_eff = N nu_c / u_c

(the batch variance of ``n_eff`` independent Gaussian values). Training mode only: in inference
mode the outputs do not exist.
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from .context import RuleContext
from ..spatial import positions
from .pooling import spatial_mean


def _vector(ctx: RuleContext, index: int, channels: int, default: float) -> np.ndarray:
    value = ctx.const(index) if ctx.has_input(index) else None
    if value is None:
        return np.full(channels, default)
    return np.broadcast_to(np.asarray(value, np.float64).reshape(-1), (channels,))


def running_statistics(x: Moments, in_shape, ctx: RuleContext) -> list[Moments | None]:
    """``[running_mean', running_var']`` as ``[C]`` vectors (see the module docstring); None
    for one whose running input is not constant."""
    channels, batch = in_shape[1], max(1, in_shape[0])
    mu, nu = x.values_along(1, channels)
    u, centred = nu, np.zeros(channels)
    if len(in_shape) > 2:
        corr = positions(x, tuple(in_shape)).corr
        if corr is not None:
            centred = np.clip(corr.batch_centred(channels), 0.0, 1.0)
        # spatial_mean gives the within-batch variance of the sample means, u (1 - k / N)
        within = spatial_mean(x, tuple(in_shape)).values_along(1, channels)[1]
        kept = 1.0 - centred / batch
        u = np.where(kept > 0, within / np.where(kept > 0, kept, 1.0), nu)
    u = np.minimum(u, nu)
    var_m = u * (1.0 - centred) / batch
    momentum = float(ctx.attr("momentum", 0.9))
    n_eff = np.where(u > 0, batch * nu / np.maximum(u, 1e-300), np.inf)
    stats = [(mu, var_m, 0.0), (nu - var_m, 2.0 * nu**2 / n_eff, 1.0)]
    out = []
    for index, (mean, noise, default) in zip((3, 4), stats):
        if ctx.has_input(index) and ctx.const(index) is None:
            out.append(None)
            continue
        running = _vector(ctx, index, channels, default)
        out.append(Moments(momentum * running + (1 - momentum) * mean,
                           (1 - momentum) ** 2 * noise))
    return out
