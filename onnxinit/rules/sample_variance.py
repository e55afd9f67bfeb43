"""The variance statistic of independent values: ``v = mean_axes (x - mean_axes x)^2`` over K
values of an element-wise chain x of a Gaussian that are independent along the axes
(tf2onnx's ``reduce_variance`` / ``reduce_std`` of a sequence of per-step dense features).

The reduce rule sums the K squares ``d_t^2`` as independent, ``Var v = Var d^2 / K``; they share
the mean they are centred on, and for independent x (the biased sample variance, central
moments sigma^2 and mu_4 of x)

    E v = sigma^2 (K - 1) / K,    Var v = (K - 1)^2 / K^3 (mu_4 - sigma^4 (K - 3) / (K - 1)).

Applies where the ReduceMean reads ``d * d`` (or ``d^2``), d is ``x - ReduceMean(x)`` over the
same axes (keepdims), x is a chain of one Gaussian whose moments do not vary along them, and
the values are independent: the mean's predicted variance is ``sigma^2 / K`` within
``TOLERANCE`` (correlated values, a Conv map's channels, are :mod:`.quadratic_form_law`'s).
Over 4 independent ReLU steps the independent squares read 0.67x (with the centred law of
:mod:`.centred_law`), 1.53x with x's law shifted.
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from .centred_law import NODES, T_NODES, T_WEIGHTS
from .context import RuleContext
from .gaussian import compose, expand
from .reduce_axes import node_axes
from .table_rows import squared_input

TOLERANCE = 0.1


def _keepdims(node) -> bool:
    return bool(next((a.i for a in node.attribute if a.name == "keepdims"), 1))


def _centred_source(ctx: RuleContext, d: str, axes, rank: int):
    """(x, mean node) when d is ``Sub(x, ReduceMean(x, axes, keepdims))``; None otherwise."""
    graph = ctx.graph
    node_id = graph.producer.get(d)
    sub = graph.node(node_id) if node_id else None
    if sub is None or sub.op_type != "Sub" or len(sub.input) != 2:
        return None
    mean_id = graph.producer.get(sub.input[1])
    mean = graph.node(mean_id) if mean_id else None
    if (mean is None or mean.op_type != "ReduceMean" or mean.input[0] != sub.input[0]
            or not _keepdims(mean) or node_axes(mean, graph, rank) != axes):
        return None
    return sub.input[0], mean.output[0]


def sample_variance(ctx: RuleContext, out: Moments) -> Moments:
    """``out`` (the reduce's Moments of v) with the closed form of the module docstring where
    it applies; ``out`` itself otherwise."""
    graph, known, node = ctx.graph, ctx.known or {}, ctx.node
    if node.op_type != "ReduceMean" or out.spatial is not None or out.mixture is not None:
        return out
    d = squared_input(graph, node.input[0])
    shape = graph.shape(d) if d else None
    if not shape or not all(isinstance(n, int) for n in shape):
        return out
    rank = len(shape)
    axes = node_axes(node, graph, rank)
    found = _centred_source(ctx, d, axes, rank) if axes else None
    if found is None:
        return out
    x, m = known.get(found[0]), known.get(found[1])
    src = x.source if x is not None else None
    if src is None or not src.chain or x.spatial is not None or x.mixture is not None or m is None:
        return out
    k = int(np.prod([shape[a] for a in axes]))
    mu_z, var_z = expand(np.asarray(src.mean, np.float64), rank), expand(np.asarray(src.var, np.float64), rank)
    if k < 2 or mu_z.ndim != rank or var_z.ndim != rank or any(
            a.shape[i] != 1 for a in (mu_z, var_z) for i in axes):
        return out
    t = T_NODES.reshape((NODES,) + (1,) * rank)
    w = T_WEIGHTS.reshape((NODES,) + (1,) * rank)
    with np.errstate(all="ignore"):
        values = np.asarray(compose(src.chain)(mu_z + np.sqrt(var_z) * t), dtype=np.float64)
    mean = (w * values).sum(axis=0)
    centred = values - mean
    var = (w * centred**2).sum(axis=0)
    mu4 = (w * centred**4).sum(axis=0)
    var_m = expand(np.asarray(m.var, np.float64), rank)
    if not (np.all(np.isfinite(mu4)) and np.all(var > 0)) or not np.all(
            np.abs(var_m * k / var - 1.0) <= TOLERANCE):
        return out
    e_v = var * (k - 1) / k
    var_v = np.maximum((k - 1) ** 2 / k**3 * (mu4 - var * var * (k - 3) / (k - 1)), 0.0)
    if not _keepdims(node):
        e_v, var_v = np.squeeze(e_v, axis=axes), np.squeeze(var_v, axis=axes)
    e_v, var_v = np.broadcast_arrays(e_v, var_v)
    if np.shape(e_v) != np.broadcast_shapes(np.shape(out.mean), np.shape(e_v)):
        return out
    return Moments(np.ascontiguousarray(e_v), np.ascontiguousarray(var_v), None, None,
                   out.tokens, out.rows)


__all__ = ["sample_variance"]
