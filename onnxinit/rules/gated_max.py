"""A MaxPool of a map multiplied by a non-negative per-sample gate (a squeeze-excite or ESE
attention's ``x * sigmoid(fc(mean(x)))`` before a stage's pool, as in VoVNet-ESE).

The product ``y = x s`` has lost x's element-wise chain (the ReLU under it): drawn as a Gaussian
of y's moments, the maximum of a window read its variance at 0.38x on a ReLU map. But a gate
``s >= 0`` that is constant over the pooled axes (shape ``[N or 1, C or 1, 1, ...]``) factors out
of every window::

    max_t (s x_t) = s max_t x_t

so with M the MaxPool of x (its own rule: x keeps its chain) and s taken independent of M
(the gate reads the whole map, a window's maximum a few of its values):

    E[y] = E[s] E[M],   Var[y] = (Var s + E[s]^2)(Var M + E[M]^2) - E[s]^2 E[M]^2

per output position class, and y's spatial correlation is that of the product of M with a
factor equal at every position (``correlation.product`` with s's correlation 1 at every offset:
the gate's variance is shared by the whole map, a floor). Not modelled: the dependence of the
gate on the sample's energy, which the window's maximum also follows.
"""

from __future__ import annotations

import numpy as np

from .. import correlation
from ..moments import Moments
from ..spatial import attach
from .context import RuleContext
from .support import nonnegative


def gate_operands(ctx: RuleContext) -> tuple[str, str] | None:
    """(x, s) when the pool's input is ``Mul(x, s)`` (either order) with x of the input's shape
    and s a non-negative signal of size 1 on every spatial axis; None otherwise."""
    if ctx.known is None:
        return None
    producer = ctx.graph.producer.get(ctx.node.input[0])
    if producer is None:
        return None
    node = ctx.graph.node(producer)
    if node.op_type != "Mul" or len(node.input) != 2:
        return None
    shape = ctx.in_shape(0)
    for x, s in (node.input, node.input[::-1]):
        s_shape = ctx.graph.shape(s)
        if (ctx.graph.shape(x) != shape or s_shape is None or len(s_shape) != len(shape)
                or any(d != 1 for d in s_shape[2:]) or s_shape[1] not in (1, shape[1])):
            continue
        if ctx.known.get(x) is None or ctx.known.get(s) is None or ctx.graph.is_constant(s):
            continue
        if nonnegative(ctx.graph, s):
            return x, s
    return None


def gated(pooled: Moments, gate: Moments, out_sizes) -> Moments:
    """The MaxPool of ``x s`` from ``pooled`` (the MaxPool of x) and the gate's moments
    ``gate`` (module docstring)."""
    rank = 2 + len(out_sizes)
    ms = np.asarray(gate.mean, np.float64)
    ns = np.asarray(gate.var, np.float64)
    ms, ns = (np.reshape(a, (1, -1) + (1,) * (rank - 2)) if a.ndim else
              np.reshape(a, (1,) * rank) for a in (ms, ns))

    def scaled(m: Moments) -> Moments:
        mean, var = np.asarray(m.mean, np.float64), np.asarray(m.var, np.float64)
        if mean.ndim < rank:
            mean, var = (np.reshape(a, (1,) * (rank - a.ndim) + a.shape) for a in (mean, var))
        second = (ns + ms**2) * (var + mean**2)
        return Moments(ms * mean, np.maximum(second - (ms * mean) ** 2, 0.0))

    sp = pooled.spatial
    if sp is None:
        return scaled(pooled)
    corr = sp.corr
    if corr is not None:
        channels = int(np.size(pooled.mean))
        ones = _equal_everywhere(np.size(ms), rank - 2)
        corr = correlation.product(
            corr, np.broadcast_to(np.ravel(pooled.var), (channels,)),
            np.broadcast_to(np.ravel(pooled.mean), (channels,)), ones,
            np.ravel(ns), np.ravel(ms), out_sizes)
    return attach(scaled(sp.cells), sp.maps, corr)


def _equal_everywhere(channels: int, axes: int) -> correlation.Correlation:
    """The correlation of a factor equal at every position: 1 at every offset."""
    return correlation.Correlation(np.ones((channels,) + (1,) * axes), np.ones(channels))
