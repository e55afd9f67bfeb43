"""Tensors that are a dense layer of normalized rows, and the participation ratio of those
rows' features: each element of ``n W`` (plus constants) is ``u . n`` with ``u`` a fixed
weight column and ``n`` a row of fixed length (a LayerNorm's or ``F.normalize``'s), so it is
bounded: for an isotropic row of d features its standardized law is the cosine law of
:func:`.logit_law.cosine_deviates` (excess kurtosis ``-6 / (d + 2)``); for correlated features
d is taken as the participation ratio ``(tr S)^2 / tr S^2`` of the normalized row's feature
covariance S. Read by the softmax of such keys (:mod:`.normalised_keys`) and by element-wise
chains on such a dense layer (:mod:`.normalised_chain`).

Not modelled: the direction of u relative to S (the isotropic law at the participation
ratio), dense layers past a non-linear map of the rows; rows of more than ``MAX_DIM``
effective features are left Gaussian (their excess kurtosis is under 2.5%).
"""

from __future__ import annotations

import numpy as np

from ..strict import fall_back
from .centred_rows import centred_input
from .channel_covariance import row_covariance
from .context import RuleContext, RuleError
from .covariance_layout import variances
from .unit_rows import is_unit_rows

MAX_DIM = 256  # effective features beyond which the projections stay Gaussian
_LAYOUT = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Cast")
_CONSTANT_MAP = ("Mul", "Div", "Add", "Sub")
MAX_STEPS = 12


def _signal_input(graph, node) -> str | None:
    """The one signal input of an element-wise op with a constant other operand, else None."""
    signals = [t for t in node.input if t and graph.value(t) is None]
    return signals[0] if len(signals) == 1 else None


def dense_layer(graph, name: str) -> tuple[str, np.ndarray] | None:
    """(x, W) where ``name`` is ``x @ W`` (W a constant matrix: MatMul, or Gemm without transA
    and with a constant bias) through layout ops and constant scales and offsets, else None."""
    for _ in range(MAX_STEPS):
        node_id = graph.producer.get(name)
        if node_id is None:
            return None
        node = graph.node(node_id)
        if node.op_type in _LAYOUT:
            name = node.input[0]
        elif node.op_type in _CONSTANT_MAP:
            name = _signal_input(graph, node)
            if name is None:
                return None
        elif node.op_type == "MatMul":
            w = graph.value(node.input[1])
            return (node.input[0], np.asarray(w)) if w is not None and np.ndim(w) == 2 else None
        elif node.op_type == "Gemm":
            w = graph.value(node.input[1])
            flags = {a.name: a.i for a in node.attribute}
            bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
            constant = bias is None or graph.value(bias) is not None
            if w is None or np.ndim(w) != 2 or flags.get("transA", 0) or not constant:
                return None
            return node.input[0], np.asarray(w).T if flags.get("transB", 0) else np.asarray(w)
        else:
            return None
    return None


def dense_input(graph, name: str) -> str | None:
    """x of :func:`dense_layer`, else None."""
    found = dense_layer(graph, name)
    return None if found is None else found[0]


def _through_layout(graph, name: str, rows: str) -> bool:
    """``name`` is ``rows`` moved by layout ops only."""
    for _ in range(MAX_STEPS):
        if name == rows:
            return True
        node_id = graph.producer.get(name)
        if node_id is None or graph.node(node_id).op_type not in _LAYOUT:
            return False
        name = graph.node(node_id).input[0]
    return False


def projection_variances(ctx: RuleContext, name: str) -> np.ndarray | None:
    """Per output feature j of the dense layer ``name`` of normalized rows read directly
    (through layout ops), ``u_j^T S u_j`` (u_j the weight column, S the rows' feature
    covariance from their field): the projection's variance (the sum over independent
    features, ``sum_i u_ij^2 S_ii``, misses the spread that S's correlations give it); None
    without a field or for other layouts."""
    found = dense_layer(ctx.graph, name)
    if found is None or ctx.known is None:
        return None
    x, w = found
    rows = normalised(ctx, x)
    shape = ctx.graph.shape(rows) if rows else None
    if rows is None or not shape or not _through_layout(ctx.graph, x, rows):
        return None
    field = row_covariance(ctx, rows)
    if field is None or field.head_axis is not None or field.axis != len(shape) - 1:
        return None
    cov, w = np.asarray(field.cov, dtype=np.float64), np.asarray(w, dtype=np.float64)
    if cov.shape[0] != w.shape[0]:
        return None
    full = ((cov @ w) * w).sum(axis=0)  # u_j^T S u_j for every column at once
    return full if np.all(full > 0) and np.all(np.isfinite(full)) else None


def normalised(ctx: RuleContext, name: str) -> str | None:
    """The tensor of normalized rows that ``name`` is (through layout ops and a constant
    gamma and beta): a LayerNormalization over the last axis, TensorFlow's folded LayerNorm
    or unit rows; else None."""
    graph = ctx.graph
    for _ in range(MAX_STEPS):
        node_id = graph.producer.get(name)
        if node_id is None:
            return None
        node = graph.node(node_id)
        nctx = ctx.for_node(node_id)
        if node.op_type == "LayerNormalization":
            shape = graph.shape(name)
            axis = nctx.attr("axis", -1)
            return name if shape and axis % len(shape) == len(shape) - 1 else None
        if node.op_type == "Add" and centred_input(nctx) is not None:
            return name  # x * s + (c - mean(x) * s): TensorFlow's folded LayerNorm
        if node.op_type == "Div" and is_unit_rows(nctx):
            return name
        if node.op_type in _LAYOUT:
            name = node.input[0]
        elif node.op_type in _CONSTANT_MAP:
            name = _signal_input(graph, node)
            if name is None:
                return None
        else:
            return None
    return None


def participation_ratio(cov: np.ndarray) -> float:
    """``(tr S)^2 / tr S^2`` of a covariance ``S`` (the sum of its squared entries is tr S^2)."""
    cov = np.asarray(cov, dtype=np.float64)
    square = float((cov * cov).sum())
    return float(np.trace(cov)) ** 2 / square if square > 0 else 0.0


def row_dim(ctx: RuleContext, rows: str) -> float | None:
    """The participation ratio of the features of the normalized rows ``rows``: from their
    field, else their variances (independent features)."""
    shape = ctx.graph.shape(rows)
    if not shape or rows not in (ctx.known or {}):
        return None
    field = row_covariance(ctx, rows)
    if field is not None and field.head_axis is None and field.axis == len(shape) - 1:
        return participation_ratio(field.cov)
    nu = variances(ctx.known[rows], shape, len(shape) - 1)
    return participation_ratio(np.diag(nu))


def dense_rows_dim(ctx: RuleContext, name: str) -> int | None:
    """d of the cosine law that the elements of ``name`` follow (module docstring) when it is a
    dense layer of normalized rows of at least 3 and at most ``MAX_DIM`` effective features;
    else None."""
    if ctx.known is None:
        return None
    try:
        x = dense_input(ctx.graph, name)
        rows = normalised(ctx, x) if x else None
        r = row_dim(ctx, rows) if rows else None
    except (RuleError, ValueError, IndexError) as exc:
        fall_back(exc, (RuleError,))
        return None
    if r is None or not np.isfinite(r) or r < 3 or r > MAX_DIM:
        return None
    return int(round(r))


__all__ = ["MAX_DIM", "dense_input", "dense_layer", "dense_rows_dim", "normalised",
           "participation_ratio", "projection_variances", "row_dim"]
