"""Where a few-term Conv's skewness reaches an element-wise function through a training-mode
BatchNorm (``f(BatchNorm(Conv(x)))``, every torchvision MobileNetV3 / EfficientNet block's
depthwise half): the BatchNorm the chain reads the Conv through, the Conv's cumulants at an
interior position, and the class of a map's centre where :mod:`.edgeworth` evaluates them.

A training-mode BatchNorm maps channel j affinely, ``z = a_j (y - m_j) + b_j`` with ``a_j`` the
scale over the batch's spread, so z keeps y's standardized cumulants up to the sign of the
scale: ``gamma_z = sign(scale_j) k3_j / s_j^3``, ``kappa_z = k4_j / s_j^4`` (``s_j^2`` the
Conv output's variance, ``k3_j``, ``k4_j`` its cumulants below).
"""

from __future__ import annotations

import numpy as np

from .context import RuleContext, RuleError
from .conv_geometry import begin_pads
from .kurtosis import _step


def centre_class(maps) -> tuple[int, ...]:
    """The position class of the map's centre (deep in a stack of padded convs every position
    of a small map may be a class of its own, so the most frequent class can be a corner)."""
    return tuple(int(np.asarray(m)[np.asarray(m).size // 2]) for m in maps)


def at_centre(a: np.ndarray, maps) -> np.ndarray:
    """``a`` ``[1, C, K_0, ...]`` at the class of the map's centre, ``[1, C, 1, ...]``."""
    if maps is None or a.ndim < 3 or a.shape[2:] == (1,) * (a.ndim - 2):
        return a[(slice(None), slice(None)) + (slice(0, 1),) * (a.ndim - 2)]
    index = centre_class(maps)
    return a[(slice(None), slice(None)) + tuple(slice(i, i + 1) for i in index)]


def centre_taps(conv: RuleContext) -> np.ndarray | None:
    """``[k_0, ...]``: which of a Conv's taps read inside the input at the output map's centre
    (index ``size // 2`` per axis, as :func:`centre_class`); on a map smaller than the kernel
    that is not every tap. None without static shapes."""
    try:
        in_shape, out_shape = conv.in_shape(0), conv.out_shape(0)
    except RuleError:
        return None
    w = conv.const(1)
    if w is None or len(in_shape) != np.ndim(w) or len(out_shape) != np.ndim(w):
        return None
    kernel = list(np.shape(w)[2:])
    n = len(kernel)
    strides = list(conv.attr("strides", [1] * n))
    dilations = list(conv.attr("dilations", [1] * n))
    begins = begin_pads(conv, in_shape[2:], out_shape[2:], kernel, strides, dilations)
    mask = np.ones((), dtype=bool)
    for d in range(n):
        index = (out_shape[2 + d] // 2) * strides[d] - begins[d] + np.arange(kernel[d]) * dilations[d]
        mask = np.multiply.outer(mask, (index >= 0) & (index < in_shape[2 + d]))
    return mask


def tap_cumulants(w: np.ndarray, group: int, inside: np.ndarray, k3: np.ndarray,
                  k4: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(k3, k4) ``[C_out]`` of a Conv's output (weights ``w``, ``group`` groups) at a position
    whose taps ``inside`` read the input (:func:`centre_taps`), from its inputs' ``k3``, ``k4``
    per channel, independent across taps: ``k_p,j = sum_{c in j's group, t inside} W_jct^p
    k_p,c``; None where the shapes do not fit."""
    if w.ndim < 3 or group < 1 or inside.shape != w.shape[2:]:
        return None
    c_out, per_group = w.shape[0], w.shape[1]
    first = (np.arange(c_out) // max(1, c_out // group)) * per_group
    idx = first[:, None] + np.arange(per_group)[None, :]  # [C_out, C_in / group]
    w2 = w * w * inside
    out = []
    for k, wp in ((k3, w2 * w), (k4, w2 * w2)):
        k = np.asarray(k, dtype=np.float64).reshape(-1)
        if idx.max() >= k.size:
            return None
        out.append((wp.reshape(c_out, per_group, -1).sum(axis=2) * k[idx]).sum(axis=1))
    return out[0], out[1]


def batch_norm_of(ctx: RuleContext, conv_out: str) -> tuple[str, np.ndarray] | None:
    """(the output of the BatchNormalization the chain ending at the node's input reads
    ``conv_out`` through, the sign of its scale per channel ``[C]``); None where there is none
    or it has no constant scale."""
    graph, tensor, found = ctx.graph, ctx.node.input[0], None
    for _ in range(16):
        node_id = graph.producer.get(tensor)
        if node_id is None or tensor == conv_out:
            break
        node = graph.node(node_id)
        if node.op_type == "BatchNormalization":
            found = (tensor, node_id) if node.input[0] == conv_out else None
            break
        tensor = _step(graph, node_id, ctx)
        if tensor is None:
            return None
    if found is None or found[0] not in ctx.known:
        return None
    scale = ctx.for_node(found[1]).const(1)
    if scale is None:
        return None
    return found[0], np.sign(np.asarray(scale, dtype=np.float64).ravel())


__all__ = ["at_centre", "batch_norm_of", "centre_class", "centre_taps", "tap_cumulants"]
