"""A Conv's output with its channels moved last (tf2onnx's NCHW -> NHWC Transpose after each
Conv): its features are a dense layer of the window's taps, for :mod:`.feature_pairs`."""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from .context import RuleContext


def conv_channels_last(ctx: RuleContext) -> tuple[np.ndarray, Moments] | None:
    """(W [Cin kh kw, Cout], the Conv's input moments) when the node moves the channels of a
    Conv's output (group 1, constant weight) to the last axis (tf2onnx's NCHW -> NHWC after
    each Conv, a patch embedding's features): the channels are a dense layer of the window's
    taps, taken as independent. Else None."""
    perm = ctx.attr("perm")
    node_id = ctx.graph.producer.get(ctx.node.input[0])
    if perm is None or len(perm) < 3 or list(perm)[-1] != 1 or not node_id:
        return None
    conv = ctx.for_node(node_id)
    if conv.node.op_type != "Conv" or conv.attr("group", 1) != 1:
        return None
    w, x = conv.const(1), (ctx.known or {}).get(conv.node.input[0])
    if w is None or np.ndim(w) < 3 or x is None:
        return None
    return np.reshape(w, (w.shape[0], -1)).T, x


__all__ = ["conv_channels_last"]
