"""Rows centred on their own mean, recognised in the graph for :mod:`.feature_pairs`.

A row with its mean over the last axis subtracted sums to 0 exactly, so its features are
correlated: ``sum_{d != e} Cov(z_d, z_e) = -sum_d Var z_d``. A mean over such a row has no
variance, and a mean over ``x + a`` with x centred is the mean over ``a`` alone (a transformer's
residual ``x + attention(x)`` after a LayerNorm, whose per-token mean a decomposed LayerNorm
computes: treated as independent features it reads ``Var x / D``, 4-16x the measured).

Two spellings: ``x - mean(x)`` and TensorFlow's folded normalisation (tf2onnx writes Keras'
LayerNormalization so), ``x * s + (c - mean(x) * s)`` with a per-row scale ``s`` (the
``- mean * s`` also as ``Neg(mean) * s``; ``s`` a per-row scalar times a gamma whose features
are all equal); the mean is a ``ReduceMean`` over the last axis alone
or a ``GlobalAveragePool`` of a rank-3 tensor (which averages its last axis). The row of the
folded form is ``(x - mean) s + c``: centred while ``c`` is the same for every feature (a
LayerNorm's beta at initialization; a per-feature ``c`` or a per-feature ``s`` such as a
trained gamma makes the row only nearly centred).

``signed``, the mean correlation of a centred row's pairs, is the one that makes
:func:`.pair_algebra.row_mean_factor` 0 at the row's variances ``V_d``:
``signed = -sum V / ((sum sqrt V)^2 - sum V)`` (``-1/(D-1)`` for equal variances).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..moments import Moments
from .context import RuleContext
from .pair_algebra import Pairs, row_vars
from .row_norm import without_casts


def reduces_last_alone(ctx: RuleContext) -> bool:
    """The node (ReduceMean, ReduceSum, GlobalAveragePool; ReduceL2, ReduceSumSquare) reduces
    its input's last axis (size > 1) and nothing else."""
    op = ctx.node.op_type
    if op not in ("ReduceMean", "ReduceSum", "GlobalAveragePool", "ReduceL2", "ReduceSumSquare"):
        return False
    x, y = ctx.graph.shape(ctx.node.input[0]), ctx.graph.shape(ctx.node.output[0])
    if not x or not y or x[-1] <= 1:
        return False
    if op == "GlobalAveragePool":
        if len(x) != 3:
            return False
    elif _axes(ctx) not in ([-1], [len(x) - 1]):
        return False  # shapes alone cannot tell the last axis from another of the same size
    if len(y) == len(x):
        return y[-1] == 1 and tuple(y[:-1]) == tuple(x[:-1])
    return tuple(y) == tuple(x[:-1])


def _axes(ctx: RuleContext) -> list[int] | None:
    """A Reduce node's axes (attribute, or input 1 from opset 18); None when not constant."""
    axes = ctx.attr("axes")
    if axes is None and len(ctx.node.input) > 1 and ctx.node.input[1]:
        axes = ctx.graph.value(ctx.node.input[1])
    return None if axes is None else [int(a) for a in np.ravel(axes)]


def _producer(ctx: RuleContext, name: str):
    node_id = ctx.graph.producer.get(name)
    return (None, None) if not node_id else (node_id, ctx.graph.node(node_id))


def row_mean_of(ctx: RuleContext, name: str) -> str | None:
    """x when ``name`` is the mean of x over its last axis alone (kept), else None."""
    node_id, node = _producer(ctx, without_casts(ctx, name))
    if node is None or node.op_type not in ("ReduceMean", "GlobalAveragePool"):
        return None
    if not reduces_last_alone(ctx.for_node(node_id)):
        return None
    return without_casts(ctx, node.input[0])


def _factor(ctx: RuleContext, name: str, s: str) -> str | None:
    """f when ``name`` is ``f * s``, else None."""
    _, prod = _producer(ctx, name)
    if prod is None or prod.op_type != "Mul" or s not in prod.input:
        return None
    return prod.input[1] if prod.input[0] == s else prod.input[0]


def _mean_times(ctx: RuleContext, name: str, s: str) -> str | None:
    """x when ``name`` is ``mean(x) * s``, else None."""
    f = _factor(ctx, name, s)
    return None if f is None else row_mean_of(ctx, f)


def _minus_mean_times(ctx: RuleContext, name: str, s: str) -> str | None:
    """x when ``name`` is ``-mean(x) * s`` (``Neg(mean) * s``), else None."""
    f = _factor(ctx, name, s)
    _, neg = _producer(ctx, f) if f is not None else (None, None)
    return None if neg is None or neg.op_type != "Neg" else row_mean_of(ctx, neg.input[0])


def _shift(ctx: RuleContext, name: str, s: str) -> str | None:
    """x when ``name`` is ``c - mean(x) * s`` (``Sub(c, mean * s)``, ``Add(Neg(mean) * s, c)``,
    or ``Neg(mean) * s`` where c is 0 and folded away) with c a constant, else None."""
    _, node = _producer(ctx, name)
    if node is None or len(node.input) != 2:
        return None
    graph = ctx.graph
    if node.op_type == "Mul":
        return _minus_mean_times(ctx, name, s)
    if node.op_type == "Sub" and graph.value(node.input[0]) is not None:
        return _mean_times(ctx, node.input[1], s)
    if node.op_type == "Add":
        for i in (0, 1):
            if graph.value(node.input[1 - i]) is not None:
                return _minus_mean_times(ctx, node.input[i], s)
    return None


def _is_row_scale(ctx: RuleContext, name: str) -> bool:
    """``name`` is the same for every feature of a row: its last axis is 1, or it is such a
    tensor times a constant whose values are all equal (a LayerNorm's gamma at
    initialization)."""
    shape = ctx.graph.shape(name)
    if shape and shape[-1] == 1:
        return True
    _, node = _producer(ctx, name)
    if node is None or node.op_type != "Mul" or len(node.input) != 2:
        return False
    for i in (0, 1):
        c = ctx.graph.value(node.input[1 - i])
        row = ctx.graph.shape(node.input[i])
        if c is not None and np.size(c) and np.all(c == np.ravel(c)[0]) and row and row[-1] == 1:
            return True
    return False


def centred_input(ctx: RuleContext) -> str | None:
    """The tensor x whose centred rows the node computes (module docstring), else None: the
    node is ``x - mean(x)``, ``x * s + (c - mean(x) * s)`` or ``x * s - mean(x) * s``."""
    node = ctx.node
    if len(node.input) != 2 or node.op_type not in ("Add", "Sub"):
        return None
    if node.op_type == "Sub":
        x = without_casts(ctx, node.input[0])
        if row_mean_of(ctx, node.input[1]) == x:
            return x
    for i in ((0, 1) if node.op_type == "Add" else (0,)):
        _, prod = _producer(ctx, node.input[i])
        if prod is None or prod.op_type != "Mul" or len(prod.input) != 2:
            continue
        for j in (0, 1):
            x, s = without_casts(ctx, prod.input[j]), prod.input[1 - j]
            if not _is_row_scale(ctx, s):
                continue
            found = (_shift if node.op_type == "Add" else _mean_times)(ctx, node.input[1 - i], s)
            if found == x:
                return x
    return None


def centred(pairs: Pairs, ym: Moments, d: int | None) -> Pairs:
    """``pairs`` with ``signed`` set for a centred row of ``d`` features (module docstring)
    and ``squared`` at least its square."""
    if not d or d < 2:
        return pairs
    v = row_vars(ym, d)
    total = float(v.sum())
    cross = float(np.sqrt(v).sum()) ** 2 - total
    if total <= 0 or cross <= 0:
        return pairs
    signed = -total / cross
    return replace(pairs, signed=signed, squared=max(pairs.squared, signed * signed))


__all__ = ["centred", "centred_input", "reduces_last_alone", "row_mean_of"]
