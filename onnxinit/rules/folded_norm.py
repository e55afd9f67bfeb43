"""The output of TensorFlow's folded LayerNorm (tf2onnx writes Keras' LayerNormalization as
``y = x * s + (c - mean(x) * s)``, ``s = g(v)`` with ``v = mean((x - mean(x))^2)`` over the
row, :mod:`.centred_rows`): each row's energy around ``c`` is fixed,
``sum_d (y_d - c_d)^2 = D v g(v)^2`` (``gamma^2 D v / (v + eps)``), the same for every token.

The rules see the output as a sum of two products and give each token's row an energy of its
own: on a Keras text encoder whose tokens have position-dependent means, the rows' predicted
``mean_d E[y_d^2]`` spread over the tokens with a variance of 0.002 around 1.014 where every
token has 1.000, and the next norm's variance statistic read that spread as its own (1.8x
between tokens). Each row's per-feature second moments around ``c`` are scaled to the fixed
energy, ``E[v g(v)^2]`` taken at the row's mean ``v`` (exact for ``v >> eps``), keeping their
shape across the features: means ``c + (mu - c) sqrt(f)``, variances ``nu f``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..moments import Moments
from .chi_square import chain_from
from .context import RuleContext
from .gaussian import compose

_MEANS = ("GlobalAveragePool", "ReduceMean")


def _statistic_chain(ctx: RuleContext, name: str) -> tuple[str, tuple] | None:
    """(the row statistic ``v``, the element-wise chain from it to ``name``) when ``name`` is
    an element-wise function of a mean over the row, else None."""
    return chain_from(ctx, name, lambda node: node.op_type in _MEANS)


def _shift_constant(ctx: RuleContext, name: str) -> np.ndarray | float | None:
    """``c`` of the shift ``c - mean * s`` (0 where it was folded away), else None."""
    node_id = ctx.graph.producer.get(name)
    if not node_id:
        return None
    node = ctx.graph.node(node_id)
    if node.op_type == "Mul":
        return 0.0
    values = [ctx.graph.value(n) for n in node.input]
    found = [v for v in values if v is not None]
    return np.asarray(found[0], np.float64) if len(found) == 1 else None


def fixed_row_energy(ctx: RuleContext, y: Moments, scale: str, shift: str) -> Moments | None:
    """``y`` (the folded LayerNorm's output, the node's) with each row's energy around ``c``
    set to ``D v g(v)^2`` (module docstring); ``scale`` is s, ``shift`` the node's input
    ``c - mean * s``. None where a piece is not found."""
    found = _statistic_chain(ctx, scale)
    c = _shift_constant(ctx, shift)
    stat = (ctx.known or {}).get(found[0]) if found is not None else None
    shape = ctx.graph.shape(ctx.node.output[0])
    if stat is None or c is None or not shape or None in shape:
        return None
    d = shape[-1]
    g = compose(found[1])
    v = np.asarray(stat.mean, np.float64)  # [..., 1] per row (kept axis) or pooled
    try:
        with np.errstate(all="ignore"):
            square = np.asarray(g(v), np.float64) ** 2  # [..., 1] or [..., D] (gamma)
        per_row = (square.sum(axis=-1, keepdims=True) if square.ndim and square.shape[-1] == d
                   else square * d)
        mean, var, c = np.broadcast_arrays(np.asarray(y.mean, np.float64),
                                           np.asarray(y.var, np.float64), c)
        energy = np.sum(var + (mean - c) ** 2, axis=-1, keepdims=True)
        f = v * per_row / energy
        mean, var, c, f = np.broadcast_arrays(mean, var, c, f)
    except ValueError:
        return None
    if not np.all(np.isfinite(f)) or not np.all(f > 0):
        return None
    return replace(y, mean=c + (mean - c) * np.sqrt(f), var=var * f, source=None, mixture=None)


__all__ = ["fixed_row_energy"]
