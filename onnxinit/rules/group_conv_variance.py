"""A Conv's per-channel variances where a GroupNorm's statistics read them.

The Conv rule takes its input's channels and taps as independent, ``Var y_j = sum_{c,t}
W_jct^2 nu_c``. The cross terms ``sum W_jct W_jc't' Cov(x_c(p + t), x_c'(p + t'))`` have mean
zero over random weights, so a channel-pooled variance does not need them, but a group of a
few channels does: a GroupNorm's variance statistic (written out: :mod:`.group_statistics`)
spreads over the groups as their channels' variances do. Measured on Keras' Conv2D 32 +
GroupNormalization(8) + swish x3 (tf2onnx, 32x32), the Conv after the first GroupNorm: the
independent sum correlates 0.27 with each channel's measured variance, the same-tap cross
terms 0.42, the whole patch covariance ``w_j^T Cov(patch) w_j`` 1.000.

Where the Conv's output reaches a group statistic through layout ops (``group_cells``), or a
statistic over its channels alone through element-wise functions (a LayerNorm over a ReLU
Conv map's channels at each position, which reads each channel's mean and variance: Keras'
``LayerNormalization()`` after a Conv of a LayerNorm'd Conv map, tf2onnx, the per-channel
variances 0.77-1.30x of the independent sum, as measured), this
reads the input's field (:func:`.map_means.input_field`: through element-wise chains and
per-sample normalisations, up to ``DEPTH`` Convs back, each fitted to the budget) and scales
each output channel's variance by::

    F_j = sum_{k,l} w_jk w_jl sqrt(nu_k nu_l) R[c_k, c_l, t_l - t_k] / sum_k w_jk^2 nu_k

(``cross_channel.conv_covariance`` at offset 0 over the dense kernel; every position class
by the interior's factor). None elsewhere, over ``cross_channel.FIELD_BUDGET``, or where the
field is the carried one without cross-channel terms (nothing to add).
"""

from __future__ import annotations

import numpy as np

from .. import cross_channel
from ..strict import fall_back
from .context import RuleContext, RuleError
from .covariance_layout import attr
from .field_kernels import dense_kernel
from .group_statistics import group_cells
from .map_means import DEPTH, input_field
from .reduce_axes import reduced_axes
from .elementwise import elementwise

_LAYOUT = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity")


def read_by_group(ctx: RuleContext, y: str) -> bool:
    """Whether a ReduceMean reads ``y`` through layout ops over groups of its channels and
    every position (``group_statistics.group_cells``)."""
    graph = ctx.graph
    stack = [(y, [])]
    for _ in range(16):
        if not stack:
            return False
        t, path = stack.pop()
        for node_id, _index in graph.consumers.get(t, []):
            node = graph.node(node_id)
            if node.op_type in _LAYOUT and node.output:
                stack.append((node.output[0], path + [node]))
            elif node.op_type == "ReduceMean" and path:
                sub = ctx.for_node(node_id)
                shape = graph.shape(t)
                try:
                    axes = reduced_axes(sub, len(shape)) if shape else None
                except RuleError:
                    axes = None
                if axes is not None and group_cells(sub, y, path, axes) is not None:
                    return True
    return False


def read_by_channels(ctx: RuleContext, y: str) -> bool:
    """Whether a ReduceMean (ReduceSum) over the channel axis alone reads ``y`` through
    element-wise functions of it (a ReLU): a LayerNorm's statistics over a map's channels at
    each position, which a channel's own mean and variance set."""
    graph = ctx.graph
    stack, seen = [y], set()
    while stack and len(seen) < 16:
        t = stack.pop()
        seen.add(t)
        for node_id, _index in graph.consumers.get(t, []):
            node = graph.node(node_id)
            if node.op_type in ("ReduceMean", "ReduceSum"):
                shape = graph.shape(t)
                try:
                    axes = reduced_axes(ctx.for_node(node_id), len(shape)) if shape else None
                except RuleError:
                    axes = None
                if axes == (1,):
                    return True
            elif node.output and node.output[0] not in seen and elementwise(node, ctx) is not None:
                stack.append(node.output[0])
    return False


def group_read_factor(ctx: RuleContext, w: np.ndarray) -> np.ndarray | None:
    """``F_j`` (module docstring) per output channel of the node's Conv; None where it does
    not apply."""
    try:
        return _factor(ctx, w)
    except (RuleError, ValueError, TypeError, IndexError) as exc:
        fall_back(exc, (RuleError,))
        return None


def _factor(ctx: RuleContext, w: np.ndarray) -> np.ndarray | None:
    node = ctx.node
    if not (read_by_group(ctx, node.output[0]) or read_by_channels(ctx, node.output[0])):
        return None
    x = node.input[0]
    shape_x = ctx.graph.shape(x)
    w = np.asarray(w, dtype=np.float64)
    if not shape_x or w.ndim != len(shape_x) or x not in ctx.known:
        return None
    groups = int(attr(node, "group") or 1)
    n = w.ndim - 2
    strides = attr(node, "strides") or [1] * n
    dilations = attr(node, "dilations") or [1] * n
    kern = dense_kernel(w, groups)
    if not cross_channel.affordable(shape_x[1], w.shape[0], kern, strides, dilations, [0] * n):
        return None
    field, nu = input_field(ctx, x, DEPTH, fit=True)
    off = field.copy()
    centre = tuple((m - 1) // 2 for m in field.shape[2:])
    off[(np.arange(field.shape[0]), np.arange(field.shape[0])) + centre] = 0.0
    if not np.any(off):
        return None  # independent channels and positions: the rule's own sum
    cov = cross_channel.conv_covariance(field, nu, kern, strides, dilations, [0] * n)
    full = cov[(np.arange(w.shape[0]), np.arange(w.shape[0])) + (0,) * n]
    own = (kern.weight**2 * nu[kern.channel]).sum(axis=1)
    if not (np.all(own > 0) and np.all(np.isfinite(full))):
        return None
    return np.maximum(full, 0.0) / own


__all__ = ["group_read_factor", "read_by_channels", "read_by_group"]
