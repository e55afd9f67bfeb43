"""Backward rules of the pools.

- GlobalAveragePool (S positions): ``dx = dy / S`` at every position of the sample:
  ``E = E[dy]/S``, ``Var = Var[dy]/S^2``, and the whole variance is a sample's spatial mean
  (``sample_var = Var``), and the positions share it (the token field ``cov = 1``, read where
  the map is put back to tokens: a Transpose to ``[N, H, W, C]``).
- AveragePool (window of k taps): the Conv rule with weight 1/k on every tap of the own
  channel (zero padding counted, as ``count_include_pad=1``; the border windows of
  ``count_include_pad=0`` divide by fewer taps and are slightly larger).
- MaxPool: each output's gradient goes to the argmax of its window, so over the map the
  second moment is conserved: ``E[dx^2] = (S_out / S_in) E[dy^2]``, ``E[dx] = (S_out / S_in)
  E[dy]``; a sample's spatial sum too: ``u' = (S_out / S_in)^2 u``. Overlapping windows that
  share their argmax add their gradients; the rule takes the outputs as independent. The
  gradient is marked ``selected`` (k taps, their mean pairwise correlation from the forward
  spatial correlation): an activation before the pool sees it at window maxima only.
"""

from __future__ import annotations

import itertools

from dataclasses import replace

import numpy as np

from ..rules.context import RuleError
from .activations import positions_of
from .context import GradContext
from .gradient import Gradient, along
from .linear import spread
from .registry import rule
from .tokens import shared


@rule("GlobalAveragePool")
def global_average_pool(grads, ctx: GradContext):
    """See the module docstring."""
    g = grads[0]
    shape = ctx.in_shape(0)
    rank, c = len(shape), shape[1]
    s = int(np.prod(shape[2:]))
    m, v = g.channels(rank, c)
    out = along(m / s, v / s**2, 1, rank, v / s**2, np.ones(shape[2:]))
    return [replace(out, tokens=shared(list(range(2, rank)), rank, s))]


@rule("AveragePool")
def average_pool(grads, ctx: GradContext):
    """See the module docstring."""
    g = grads[0]
    kernel = list(ctx.attr("kernel_shape"))
    shape = ctx.in_shape(0)
    rank, c = len(shape), shape[1]
    if ctx.attr("ceil_mode", 0):
        raise RuleError("AveragePool with ceil_mode")
    taps = int(np.prod(kernel))
    m, v = g.channels(rank, c)
    weight = np.zeros((c, taps, c))
    weight[np.arange(c), :, np.arange(c)] = 1.0 / taps
    return [spread((weight**2) @ v, weight, g, ctx, kernel, weight @ m)]


@rule("MaxPool")
def max_pool(grads, ctx: GradContext):
    """See the module docstring."""
    g = grads[0]
    shape = ctx.in_shape(0)
    rank, c = len(shape), shape[1]
    s_in = int(np.prod(shape[2:]))
    s_out = positions_of(ctx)
    share = s_out / s_in
    m, v = g.channels(rank, c)
    u = g.channel_sample_var(rank, c, s_out)
    mean = m * share
    var = (v + m * m) * share - mean**2
    kernel = list(ctx.attr("kernel_shape"))
    out = along(mean, var, 1, rank, u * share**2)
    selected = (int(np.prod(kernel)), window_correlation(ctx.x(0), kernel))
    return [Gradient(out.mean, out.var, out.sample_var, None, None, selected), None]


def window_correlation(x, kernel) -> float:
    """The mean correlation of two taps of a window of the forward tensor's source Gaussian
    (its spatial correlation, :mod:`onnxinit.correlation`; 0 when it has none)."""
    corr = x.spatial.corr if x.spatial is not None else None
    if corr is None:
        return 0.0
    rho, floor = corr.gaussian()
    radius = corr.radius
    if len(radius) != len(kernel):
        return 0.0
    total, count = 0.0, 0
    for t in itertools.product(*(range(k) for k in kernel)):
        for u in itertools.product(*(range(k) for k in kernel)):
            if t == u:
                continue
            d = [a - b for a, b in zip(t, u)]
            if all(abs(di) <= ri for di, ri in zip(d, radius)):
                total += float(np.mean(rho[(slice(None), *(di + ri for di, ri in zip(d, radius)))]))
            else:
                total += float(np.mean(floor))
            count += 1
    return min(max(total / max(count, 1), 0.0), 0.99)
