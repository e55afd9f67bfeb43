"""Rows scaled to unit length: ``y = x / max(||x||_2, eps)`` over the last axis (PyTorch's
``F.normalize``, exported as ``ReduceL2`` -> ``Clip(min=eps)`` -> ``Expand`` -> ``Div``; cosine
attention normalises its queries and keys so).

For a row of d independent Gaussian entries ``x_f ~ N(mu_f, s_f^2)``, ``Q = ||x||^2`` has
``E[Q] = S = sum_f (mu_f^2 + s_f^2)`` and ``Var[Q] = sum_f (2 s_f^4 + 4 mu_f^2 s_f^2)``; Q is
taken Gamma of shape ``k = S^2 / Var[Q]`` and scale ``theta = S / k`` (exact for a zero-mean
isotropic row: chi-square). Then::

    E[y_f^2] = (mu_f^2 + s_f^2) / S                         (sums to 1 over the row, exactly)
    E[y_f]   = mu_f (E[Q^-1/2] - s_f^2 E[Q^-3/2])           (Stein's lemma on x_f Q^-1/2)
    E[Q^-a]  = Gamma(k - a) / Gamma(k) theta^-a

A row of exact zeros (padding: ``S = 0``) stays 0 (``0 / eps``): mean 0, variance 0. The
independent-factor product of x and ``1/||x||`` reads ``E[x^2] E[1/Q]``, 1.07x on a row of 32
(``E[1/Q] > 1/E[Q]``), and the empirical fallback loses the per-feature means that the rows
share (the direction common to a window's keys, which is what makes a cosine softmax row
share a component). Not modelled: correlation between a row's entries (their means are the
shared part that is kept), non-Gaussian entries.
"""

from __future__ import annotations

import numpy as np

from .gamma_law import gamma_moment
from .context import RuleContext, RuleError
from .mixture import lift
from .row_norm import without_casts

_PASSING = ("Expand", "Cast", "Identity", "CastLike")
MAX_STEPS = 6


def _floor(ctx: RuleContext, node) -> float | None:
    """The constant lower bound of ``Clip(v, min)`` / ``Max(v, c)`` (and no upper bound), or
    None when the node is not one."""
    graph = ctx.graph
    if node.op_type == "Clip":
        if len(node.input) > 2 and node.input[2]:
            return None
        low = graph.value(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        if low is None:
            low = next((a.f for a in node.attribute if a.name == "min"), None)
        return None if low is None or np.size(low) != 1 else float(np.ravel(low)[0])
    if node.op_type == "Max" and len(node.input) == 2:
        for i in (0, 1):
            c = graph.value(node.input[i])
            if c is not None and np.size(c) == 1 and graph.value(node.input[1 - i]) is None:
                return float(np.ravel(c)[0])
    return None


def is_unit_rows(ctx: RuleContext) -> bool:
    """The node is ``Div(x, max(ReduceL2(x, last axis), eps))``."""
    node = ctx.node
    return (node.op_type == "Div" and len(node.input) == 2
            and _norm_of(ctx, node.input[1], without_casts(ctx, node.input[0])) is not None)


def _norm_of(ctx: RuleContext, name: str, x: str) -> float | None:
    """eps when ``name`` is ``max(ReduceL2(x over the last axis, keepdims), eps)``, broadcast
    back by Expand (Cast/Identity allowed), else None."""
    graph, eps = ctx.graph, 0.0
    for _ in range(MAX_STEPS):
        node_id = graph.producer.get(name)
        if not node_id:
            return None
        node = graph.node(node_id)
        if node.op_type in _PASSING:
            name = node.input[0]
            continue
        if node.op_type in ("Clip", "Max"):
            low = _floor(ctx, node)
            if low is None:
                return None
            eps = max(eps, low)
            name = next(i for i in node.input if graph.value(i) is None)
            continue
        if node.op_type != "ReduceL2" or without_casts(ctx, node.input[0]) != x:
            return None
        nctx = ctx.for_node(node_id)
        try:
            shape_in, shape_out = nctx.in_shape(0), nctx.out_shape(0)
        except RuleError:
            return None
        if (len(shape_in) < 1 or len(shape_out) != len(shape_in) or shape_out[-1] != 1
                or tuple(shape_out[:-1]) != tuple(shape_in[:-1])):
            return None
        return eps
    return None


def _inverse_power(k: np.ndarray, theta: np.ndarray, a: float) -> np.ndarray:
    """E[Q^-a] for Q Gamma(k, theta) (k > a; a row of under ~2 effective entries is floored)."""
    return gamma_moment(np.maximum(k, a + 0.25), theta, -a)


def unit_rows(inputs, ctx: RuleContext, rank: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``y = x / max(||x||_2, eps)`` over the last axis (module docstring): (mean, var) at
    ``rank``, or None when the node is not such a quotient."""
    node = ctx.node
    if node.op_type != "Div" or len(inputs) != 2 or any(m is None for m in inputs):
        return None
    x_name = without_casts(ctx, node.input[0])
    eps = _norm_of(ctx, node.input[1], x_name)
    if eps is None:
        return None
    d = int(ctx.in_shape(0)[-1])
    x = inputs[0]
    mean, var = lift(x.mean, rank), lift(x.var, rank)
    mean, var = np.broadcast_arrays(mean, var)
    second = var + mean**2
    fourth = 2 * var**2 + 4 * mean**2 * var
    per_row = (lambda a: a.sum(axis=-1, keepdims=True) if a.shape[-1] == d
               else d * a.mean(axis=-1, keepdims=True))
    s, vq = per_row(second), per_row(fourth)
    zero = s <= eps**2
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.where(zero | (vq <= 0), 1e12, s**2 / np.where(vq > 0, vq, 1.0))
        theta = np.where(zero, 1.0, s / k)
        half = _inverse_power(k, theta, 0.5)
        three_halves = _inverse_power(k, theta, 1.5)
        out_mean = np.where(zero, mean / max(eps, 1e-300) if eps > 0 else 0.0,
                            mean * (half - var * three_halves))
        out_second = np.where(zero, second / max(eps, 1e-300) ** 2 if eps > 0 else 0.0,
                              second / np.where(zero, 1.0, s))
    if not (np.all(np.isfinite(out_mean)) and np.all(np.isfinite(out_second))):
        return None
    return out_mean, np.maximum(out_second - out_mean**2, 0.0)


__all__ = ["is_unit_rows", "unit_rows"]
