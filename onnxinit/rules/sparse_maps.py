"""Sparse linear maps of one tensor A: a chain of bias-free convs with sparse kernels (copies,
Dirac or hand-made) and functions that are the identity on their non-negative input, composed
into ``y_j(q) = sum_k W_jk A_{c_k}(S q + o_k)`` (the taps of each output channel on A's grid).
Read by :mod:`.shared_source`, which samples the law of a residual sum of two such maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..cross_channel import sparse_kernel
from .support import identity_on_input

MAX_TERMS = 512  # taps of a composed map per output channel beyond which it is not sampled
MAX_DEPTH = 8  # producers followed back from an operand to A


@dataclass(frozen=True)
class LinearMap:
    """``y_j(q) = sum_k weight[j, k] A_{channel[j, k]}(stride q + offset[j, k])`` on A's grid
    (interior positions: zero padding is not modelled)."""

    stride: tuple[int, ...]
    channel: np.ndarray  # [C_out, K]
    offset: np.ndarray  # [C_out, K, axes]
    weight: np.ndarray  # [C_out, K]


def identity_map(channels: int, axes: int) -> LinearMap:
    return LinearMap((1,) * axes, np.arange(channels)[:, None],
                     np.zeros((channels, 1, axes), np.int64), np.ones((channels, 1)))


def merged_taps(channel, offset, weight) -> LinearMap | None:
    """Rows with equal (channel, offset) taps merged (weights added), zeros dropped, padded
    with weight 0 to the longest row; None beyond MAX_TERMS taps."""
    rows = []
    for c, o, w in zip(channel, offset, weight):
        keys = np.concatenate([c[:, None], o], axis=1)
        unique, inverse = np.unique(keys, axis=0, return_inverse=True)
        summed = np.bincount(inverse.reshape(-1), weights=w, minlength=len(unique))
        keep = summed != 0
        rows.append((unique[keep], summed[keep]))
    n = max(len(r[1]) for r in rows)
    if n == 0 or n > MAX_TERMS:
        return None
    axes = offset.shape[-1]
    ch = np.zeros((len(rows), n), np.int64)
    off = np.zeros((len(rows), n, axes), np.int64)
    wt = np.zeros((len(rows), n))
    for j, (keys, w) in enumerate(rows):
        ch[j, :len(w)], off[j, :len(w)], wt[j, :len(w)] = keys[:, 0], keys[:, 1:], w
    return ch, off, wt


def compose_conv(kern, strides, dilations, begins, inner: LinearMap) -> LinearMap | None:
    """``y_j(q) = sum_k w_jk x_{c_k}(s q - b + dil t_k)`` of ``x = inner(A)``: the taps of
    y on A, at ``S s q + S (dil t_k - b) + o_l`` with weight ``w_jk v_{c_k l}``."""
    s_in = np.asarray(inner.stride)
    base = s_in * (np.asarray(dilations) * kern.tap - np.asarray(begins))  # [C_out, K, n]
    channel = inner.channel[kern.channel]  # [C_out, K, L]
    offset = base[:, :, None, :] + inner.offset[kern.channel]
    weight = kern.weight[:, :, None] * inner.weight[kern.channel]
    c_out = weight.shape[0]
    merged = merged_taps(channel.reshape(c_out, -1), offset.reshape(c_out, -1, offset.shape[-1]),
                     weight.reshape(c_out, -1))
    if merged is None:
        return None
    stride = tuple(int(a * b) for a, b in zip(inner.stride, strides))
    return LinearMap(stride, *merged)


def linear_map(ctx, tensor: str, anchor: str, channels: int, axes: int,
               depth: int = MAX_DEPTH) -> LinearMap | None:
    """``tensor`` as a :class:`LinearMap` of ``anchor`` through sparse bias-free Convs and
    functions that are the identity on their non-negative input; None for anything else."""
    if tensor == anchor:
        return identity_map(channels, axes)
    graph = ctx.graph
    node_id = graph.producer.get(tensor)
    if node_id is None or depth <= 0:
        return None
    node = graph.node(node_id)
    if identity_on_input(node, graph):
        return linear_map(ctx, node.input[0], anchor, channels, axes, depth - 1)
    if node.op_type != "Conv" or len(node.input) < 2:
        return None
    w = graph.value(node.input[1])
    if w is None or np.ndim(w) != 2 + axes:
        return None
    if len(node.input) > 2 and node.input[2]:
        bias = graph.value(node.input[2])
        if bias is None or np.any(np.asarray(bias) != 0):
            return None
    attrs = ctx.for_node(node_id)
    if attrs.attr("auto_pad", "NOTSET") not in ("NOTSET", ""):
        return None
    kern = sparse_kernel(np.asarray(w, np.float64), attrs.attr("group", 1))
    if kern is None:
        return None
    inner = linear_map(ctx, node.input[0], anchor, channels, axes, depth - 1)
    if inner is None:
        return None
    strides = tuple(attrs.attr("strides", [1] * axes))
    begins = tuple(attrs.attr("pads", [0] * 2 * axes))[:axes]
    dilations = tuple(attrs.attr("dilations", [1] * axes))
    return compose_conv(kern, strides, dilations, begins, inner)


__all__ = ["LinearMap", "compose_conv", "identity_map", "linear_map", "merged_taps"]
