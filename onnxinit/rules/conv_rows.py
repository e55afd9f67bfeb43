"""A Conv's output channels moved to the last axis (tf2onnx's NCHW -> NHWC Transpose after each
Conv): each row (a position's channels) is a dense layer of the window's taps,
``y = W^T x_window`` with ``W [Cin kh kw, Cout]`` the kernel, the taps taken as independent.

tf2onnx writes a Keras Conv1D (and SeparableConv1D's two convolutions) as a 2-D Conv on
``[N, C, 1, T]`` (an ExpandDims before it) and a Squeeze of the unit axis before the
Transpose: ``Conv -> Squeeze -> Transpose(perm [0, 2, 1])``. The Squeeze keeps the channels on
axis 1 and each position's row, so the rows are the Conv's all the same.
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from .context import RuleContext


def _squeezed_axes(ctx: RuleContext) -> list[int] | None:
    """The axes a Squeeze removes (input 1 from opset 13, the attribute before), None when
    not static."""
    axes = ctx.const(1) if len(ctx.node.input) > 1 else ctx.attr("axes")
    if axes is None:
        return None
    rank = len(ctx.graph.shape(ctx.node.input[0]) or ())
    return [int(a) % rank for a in np.reshape(axes, -1)] if rank else None


def _conv_producer(ctx: RuleContext, name: str) -> RuleContext | None:
    """The context of the Conv that ``name`` is the output of, directly or through a Squeeze
    of unit spatial axes (axis 2 on); None otherwise."""
    node_id = ctx.graph.producer.get(name)
    if not node_id:
        return None
    found = ctx.for_node(node_id)
    if found.node.op_type == "Squeeze":
        axes = _squeezed_axes(found)
        if not axes or min(axes) < 2:
            return None
        node_id = ctx.graph.producer.get(found.node.input[0])
        found = ctx.for_node(node_id) if node_id else None
    return found if found is not None and found.node.op_type == "Conv" else None


def conv_channels_last(ctx: RuleContext) -> tuple[np.ndarray, Moments] | None:
    """(W [Cin kh kw, Cout], the window's taps' moments as a row [1, Cin kh kw]: each input
    channel's, pooled over the positions, repeated over its taps) when the node (a Transpose)
    moves the channels of a Conv's output (group 1, constant weight) to the last axis (module
    docstring). Else None. The channels' own variances matter: a pointwise Conv after a
    depthwise one (SeparableConv) reads channels whose variances spread as a chi-square of
    ``k`` taps, and ``tr C_y^2`` weighs their squares."""
    perm = ctx.attr("perm")
    if perm is None or len(perm) < 3 or list(perm)[-1] != 1:
        return None
    conv = _conv_producer(ctx, ctx.node.input[0])
    if conv is None or conv.attr("group", 1) != 1:
        return None
    w, x = conv.const(1), (ctx.known or {}).get(conv.node.input[0])
    if w is None or np.ndim(w) < 3 or x is None:
        return None
    w = np.reshape(w, (w.shape[0], -1)).T
    taps = w.shape[0] // np.shape(conv.const(1))[1]
    mean, var = x.values_along(1, np.shape(conv.const(1))[1])
    return w, Moments.along(np.repeat(mean, taps), np.repeat(var, taps), -1, 2)


__all__ = ["conv_channels_last"]
