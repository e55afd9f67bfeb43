"""The feature field's maps through the ops of a token's features (:mod:`.channel_covariance`'s
transfer rules for rows): per-head blocks through constants, rows scaled to unit length, a
LayerNormalization over the field's axis and rows centred on their mean (``P S P``), and a
dense layer (``W^T S W``), with the limits on a field's size and work."""

from __future__ import annotations

import numpy as np

from . import covariance_maps as maps
from .context import RuleContext
from .covariance_layout import Field, attr, variances

MAX_CHANNELS = 1024  # a field is [C, C]: beyond, the cross terms are small (1/sqrt(C)) anyway
MAX_ROW_FEATURES = 256  # features up to which a LayerNorm's row scale is expanded (n^3 work)
MAX_WORK = 2e8  # multiply-adds above which an op drops the field instead of mapping it


def head_affine(ctx: RuleContext, node, x: str, y: str, f_x: Field) -> Field | None:
    """Per-head blocks (row_covariance's) through a constant added or subtracted (kept) or a
    scalar constant multiplied or divided by (``c^2 S``, ``S / c^2``): a query's scale and its
    per-term biases (relative-position attention, :mod:`.fixed_forms`)."""
    graph = ctx.graph
    const = [graph.value(n) for n in node.input if n and graph.is_constant(n)]
    if graph.shape(x) != graph.shape(y) or len(const) != 1:
        return None
    if node.op_type in ("Add", "Sub"):
        return f_x
    c = float(np.ravel(const[0])[0]) if np.size(const[0]) == 1 else 0.0
    if c == 0.0 or (node.op_type == "Div" and node.input[0] != x):
        return None
    return Field(f_x.axis, f_x.cov * (c * c if node.op_type == "Mul" else 1.0 / (c * c)),
                 f_x.head_axis)


def unit_rows(ctx: RuleContext, y: str, f_x: Field) -> Field | None:
    """Rows scaled to unit length over the field's axis: the correlation kept, per head,
    rescaled to y's variances (pooled over the other axes)."""
    shape = ctx.graph.shape(y)
    if f_x.axis != len(shape) - 1:
        return None
    if f_x.head_axis is None:
        return Field(f_x.axis, maps.rescaled(f_x.cov, variances(ctx.known[y], shape, f_x.axis)))
    full = np.broadcast_to(np.asarray(ctx.known[y].var, dtype=np.float64), shape)
    other = tuple(i for i in range(len(shape)) if i not in (f_x.head_axis, f_x.axis))
    nu = (full.mean(axis=other) if other else full).reshape(-1, shape[f_x.axis])
    if nu.shape[0] != f_x.cov.shape[0]:
        return None
    return Field(f_x.axis, np.stack([maps.rescaled(c, v) for c, v in zip(f_x.cov, nu)]),
                 f_x.head_axis)


def layer_norm(ctx: RuleContext, node, x: str, y: str, f_x: Field) -> Field | None:
    """Normalized over the last axis only, the field's: ``P S_x P`` (module docstring)."""
    shape = ctx.graph.shape(y)
    axis = attr(node, "axis")
    last = len(shape) - 1
    if (axis if axis is not None else -1) % len(shape) != last or f_x.axis != last:
        return None
    scale = ctx.graph.value(node.input[1]) if len(node.input) > 1 else None
    sign = None if scale is None else np.sign(np.broadcast_to(
        np.asarray(scale, np.float64).reshape(-1), (shape[last],)))
    return Field(last, maps.centred(f_x.cov, variances(ctx.known[y], shape, last), sign))


def layer_norm_rows(ctx: RuleContext, node, x: str, y: str) -> Field | None:
    """:func:`layer_norm` of an input without a field, for a reader of the weights at hand
    (:func:`.channel_covariance.row_covariance`): ``P diag(nu_x) P``, its rows centred (a
    dense layer's row mean after it sees ``u^T P u``, not ``|u|^2``)."""
    shape_x = ctx.graph.shape(x)
    if not shape_x or shape_x[-1] > MAX_ROW_FEATURES:
        return None
    last = len(shape_x) - 1
    return layer_norm(ctx, node, x, y, Field(last, np.diag(variances(ctx.known[x], shape_x, last))))


def centred_rows(ctx: RuleContext, x: str, y: str, field_of, rows: bool) -> Field | None:
    """Rows of x centred on their mean over the last axis: ``P S_x P`` (rows: x's variances)."""
    shape_x, shape = ctx.graph.shape(x), ctx.graph.shape(y)
    last = len(shape) - 1
    f_x = field_of(x)
    if rows and f_x is None and shape_x and shape_x[-1] <= MAX_ROW_FEATURES:
        f_x = Field(len(shape_x) - 1, np.diag(variances(ctx.known[x], shape_x, len(shape_x) - 1)))
    if f_x is None or f_x.head_axis is not None or f_x.axis != last or shape_x != shape:
        return None
    return Field(last, maps.centred(f_x.cov, variances(ctx.known[y], shape, last)))


def dense_fits(ctx: RuleContext, node) -> bool:
    """A MatMul by a constant 2-D ``W [D, E]`` whose field ``W^T S W`` is within the limits."""
    w = ctx.graph.value(node.input[1]) if len(node.input) > 1 else None
    return (w is not None and np.ndim(w) == 2 and w.shape[1] <= MAX_CHANNELS
            and w.shape[1] ** 2 * w.shape[0] <= MAX_WORK)


def dense(ctx: RuleContext, node, x: str, y: str, f_x: Field) -> Field | None:
    """``X[..., D] @ W[D, E]``: ``W^T S_x W``."""
    graph = ctx.graph
    shape_x = graph.shape(x)
    if not dense_fits(ctx, node) or f_x.axis != len(shape_x) - 1:
        return None
    w = np.asarray(graph.value(node.input[1]), dtype=np.float64)
    return Field(len(graph.shape(y)) - 1, w.T @ f_x.cov @ w)


__all__ = ["MAX_CHANNELS", "MAX_ROW_FEATURES", "MAX_WORK", "centred_rows", "dense", "dense_fits",
           "head_affine", "layer_norm", "unit_rows"]
