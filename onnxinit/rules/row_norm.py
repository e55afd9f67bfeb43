"""A row scaled by a function of its own mean square: RMSNorm and LayerNorm written out as ops
(``x * 1/sqrt(mean(x^2) + eps)``, ``x / sqrt(mean(x^2) + eps)``; Llama, T5, and LayerNorm's
centred ``d / sqrt(mean(d^2) + eps)``).

Taken as independent, ``E[x^2 g(s)^2] = E[x^2] E[g(s)^2]`` reads high by Jensen's inequality
(``E[1/s] > 1/E[s]``: 1.035x on a row of 64 features). The product is not independent of its
factor: summed over the row, ``sum_f y_f^2 = D s g(s)^2`` with ``s`` the row's mean square, so
exactly ``mean_f E[y_f^2] = E[s g(s)^2]`` (``s / (s + eps)`` for RMSNorm, 1 but for eps). Each
feature takes its share of the row's second moment, ``E[y_f^2] = E[x_f^2] / mean_g E[x_g^2] *
E[s g(s)^2]``, and its mean stays ``E[x_f] E[g(s)]``. ``s`` is taken log-normal with the row's
mean square as mean (per token where the input is spelled out per token) and the mean square
tensor's relative variance.
"""

from __future__ import annotations

import numpy as np

from .context import RuleContext, RuleError
from .elementwise import node_function
from .gaussian import compose, gaussian_moments
from .mixture import lift

MAX_CHAIN = 8  # element-wise nodes between the mean square and the scale


def _strip(ctx: RuleContext, name: str) -> str:
    """``name`` before any Cast/Identity producing it."""
    graph = ctx.graph
    for _ in range(4):
        node_id = graph.producer.get(name)
        if not node_id or graph.node(node_id).op_type not in ("Cast", "Identity", "CastLike"):
            return name
        name = graph.node(node_id).input[0]
    return name


def _scale_chain(ctx: RuleContext, x: str, name: str):
    """(mean-square tensor, element-wise chain from it to ``name``) when ``name`` is an
    element-wise function of ``mean(x^2)`` over the last axis (keepdims), else None."""
    graph, chain = ctx.graph, []
    for _ in range(MAX_CHAIN):
        node_id = graph.producer.get(name)
        if not node_id:
            return None
        node = graph.node(node_id)
        if node.op_type == "ReduceMean":
            sq_id = graph.producer.get(node.input[0])
            sq = graph.node(sq_id) if sq_id else None
            if sq is None or not (sq.op_type == "Pow" and graph.value(sq.input[1]) is not None
                                  and float(np.asarray(graph.value(sq.input[1]))) == 2.0
                                  or sq.op_type == "Mul" and sq.input[0] == sq.input[1]):
                return None
            if _strip(ctx, sq.input[0]) != x or not _last_axis(ctx.for_node(node_id)):
                return None
            return name, tuple(reversed(chain))
        found = node_function(ctx.for_node(node_id))
        if found is None or found[0] is None:
            return None
        chain.append(found[0].elementwise)
        name = node.input[found[1]]
    return None


def _last_axis(ctx: RuleContext) -> bool:
    """A ReduceMean over the last axis alone, keeping it."""
    try:
        x, y = ctx.in_shape(0), ctx.out_shape(0)
    except RuleError:
        return False
    return (len(x) >= 1 and x[-1] > 1 and len(y) == len(x) and y[-1] == 1
            and tuple(y[:-1]) == tuple(x[:-1]))


def row_normalised(inputs, ctx: RuleContext, rank: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``y = x * g(s)`` or ``y = x / h(s)``, ``s = mean_f x_f^2`` over the row (last axis):
    ``E[y_f^2] = E[x_f^2] / mean_g E[x_g^2] * E[s g(s)^2]``, ``E[y_f] = E[x_f] E[g(s)]``
    with ``s`` log-normal (mean: the row's mean square; relative variance: the mean square
    tensor's). (mean, var) arrays at ``rank``; None when the node is not such a product."""
    node = ctx.node
    if node.op_type not in ("Mul", "Div") or len(inputs) != 2 or any(m is None for m in inputs):
        return None
    order = (0, 1) if node.op_type == "Div" else (0, 1, 1, 0)
    for xi, si in zip(order[::2], order[1::2]):
        found = _scale_chain(ctx, _strip(ctx, node.input[xi]), node.input[si])
        if found is not None:
            break
    else:
        return None
    s_name, chain = found
    known = ctx.known or {}
    s = known.get(s_name)
    if s is None:
        return None
    g = compose(chain)
    if node.op_type == "Div":
        h = g
        g = lambda v: 1.0 / h(v)  # noqa: E731
    x = inputs[xi]
    mean, var = lift(x.mean, rank), lift(x.var, rank)
    second = var + mean**2
    row = np.mean(second, axis=-1, keepdims=True)  # E[s] per row (per token where spelled out)
    s_mean, s_var = s.total()
    cv2 = s_var / s_mean**2 if s_mean > 0 else 0.0
    sigma2 = np.log1p(cv2) * np.ones_like(row)
    mu = np.log(np.maximum(row, 1e-300)) - sigma2 / 2
    with np.errstate(all="ignore"):
        e_sg2, _ = gaussian_moments(lambda z: np.exp(z) * g(np.exp(z)) ** 2, mu, sigma2,
                                    smooth=True)
        e_g, _ = gaussian_moments(lambda z: g(np.exp(z)), mu, sigma2, smooth=True)
    if not (np.all(np.isfinite(e_sg2)) and np.all(np.isfinite(e_g))):
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(row > 0, second / row, 0.0)
    out_mean = mean * e_g
    out_var = np.maximum(share * e_sg2 - out_mean**2, 0.0)
    return out_mean, out_var


__all__ = ["row_normalised"]
