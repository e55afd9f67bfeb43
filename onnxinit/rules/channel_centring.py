"""Channels centred on their own mean at each position, ``x - mean_c(x)``: the covariance field
of x across the channels (:mod:`.channel_covariance`) mapped to ``P S P`` (``P`` the centring).

tf2onnx's transpose optimiser moves a Keras LayerNormalization over the channels of a
channels-last map onto the NCHW Conv output it reads: the statistics become ``ReduceMean(axes
[1], keepdims)`` of ``x`` and of ``(x - mean)^2`` (the mean through a Reshape of its own
shape). The mean over the channels read the Conv's field (their correlations), the variance
statistic did not: the centred channels had no field, so their squares were summed as
independent, 0.63x of onnxruntime's variance on a Conv2D of 8 channels' 3x3 windows into 32.
With the field, the square's (Mehler's formula) gives the mean its ``1^T S 1 / tr S``.
"""

from __future__ import annotations

import numpy as np

from . import covariance_maps as maps
from .context import RuleContext
from .covariance_layout import Field, variances

_SAME = ("Reshape", "Identity", "Unsqueeze", "Squeeze", "Cast")


def _axes(node, graph) -> list[int] | None:
    for a in node.attribute:
        if a.name == "axes":
            return list(a.ints)
    if len(node.input) > 1 and node.input[1]:
        value = graph.value(node.input[1])
        return None if value is None else [int(v) for v in np.reshape(value, -1)]
    return None


def centred_over(ctx: RuleContext, node) -> tuple[str, int] | None:
    """(x, axis) when ``node`` is ``Sub(x, m)`` with m the mean of x over one axis other than
    the last (``ReduceMean`` with ``keepdims``, through layout ops that keep its shape); None
    otherwise (the rows' own mean over the last axis is :mod:`.centred_rows`')."""
    graph = ctx.graph
    if node.op_type != "Sub" or len(node.input) != 2:
        return None
    x, m = node.input
    shape_x = graph.shape(x)
    if not shape_x:
        return None
    for _ in range(4):
        node_id = graph.producer.get(m)
        if node_id is None:
            return None
        producer = graph.node(node_id)
        if producer.op_type not in _SAME:
            break
        if graph.shape(producer.input[0]) != graph.shape(m):
            return None
        m = producer.input[0]
    if producer.op_type != "ReduceMean" or producer.input[0] != x:
        return None
    axes = _axes(producer, graph)
    keep = next((a.i for a in producer.attribute if a.name == "keepdims"), 1)
    rank = len(shape_x)
    if not keep or axes is None or len(axes) != 1 or axes[0] % rank == rank - 1:
        return None
    return x, axes[0] % rank


def centred_field(ctx: RuleContext, x: str, axis: int, y: str, f_x: Field | None) -> Field | None:
    """``P S_x P`` across ``axis``, rescaled to y's variances; None where x's field is across
    another axis (or absent)."""
    if f_x is None or f_x.head_axis is not None or f_x.axis != axis:
        return None
    shape = ctx.graph.shape(y)
    if not shape or ctx.graph.shape(x) != shape:
        return None
    return Field(axis, maps.centred(f_x.cov, variances(ctx.known[y], shape, axis)))


__all__ = ["centred_field", "centred_over"]
