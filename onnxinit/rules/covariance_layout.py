"""Layout helpers for the covariance fields of :mod:`.channel_covariance`: the field type, the
per-index variances a field is scaled to, the ops that move, crop or pad the field's axis
(Transpose, Reshape, Slice, Pad, Dropout, Identity), and a Conv's tap shares."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..moments import Moments
from ..spatial import positions, within_variance
from . import covariance_maps as maps


@dataclass(frozen=True)
class Field:
    """``cov`` ``[n, n]`` across ``axis`` (non-negative) of the tensor; after a Reshape that
    splits the axis into heads, one block ``[n, n]`` per head along ``head_axis``."""

    axis: int
    cov: np.ndarray  # [n, n]; [H, n, n] per head, H along head_axis
    head_axis: int | None = None
    # with heads: the covariance of all of them [H n, H n] where known (a bidirectional
    # recurrent layer's two directions read the same inputs), for a Reshape that merges them
    joint: np.ndarray | None = None


def within(m: Moments, shape) -> np.ndarray:
    """Per-channel variance at one position (``[C]``), the position means' spread excluded."""
    c = shape[1]
    sp = positions(m, shape) if len(shape) >= 3 else None
    if sp is not None:
        return within_variance(sp, c)
    return np.broadcast_to(m.values_along(1, c)[1], (c,)).copy()


def variances(m: Moments, shape, axis: int) -> np.ndarray:
    """Per-index variance along ``axis`` (the channels': within a position)."""
    if axis == 1:
        return within(m, shape)
    return np.broadcast_to(m.values_along(axis, shape[axis])[1], (shape[axis],)).copy()


def conv_share(graph, node, w: np.ndarray, shape_x, shape_y) -> np.ndarray | None:
    """Each tap's share of positions inside the input (explicit pads, and a zero Pad of the
    positions before the Conv, TF-style "same" padding; None: auto_pad)."""
    n = w.ndim - 2
    if (attr(node, "auto_pad") or b"NOTSET") not in (b"NOTSET", b"VALID", b""):
        return None
    begins = list(attr(node, "pads") or [0] * 2 * n)[:n]
    sizes = list(shape_x[2:])
    pad_id = graph.producer.get(node.input[0])
    pad = graph.node(pad_id) if pad_id is not None else None
    if pad is not None and pad.op_type == "Pad" and len(pad.input) > 1:
        amounts = graph.value(pad.input[1])
        value = graph.value(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else 0.0
        mode = attr(pad, "mode") or b"constant"
        rank = len(shape_x)
        if (amounts is not None and value is not None and mode == b"constant"
                and not np.any(value) and np.size(amounts) == 2 * rank
                and (len(pad.input) < 4 or not pad.input[3])):
            amounts = np.asarray(amounts).reshape(-1)
            begins = [b + int(a) for b, a in zip(begins, amounts[2:rank])]
            sizes = [k - int(a) - int(e) for k, a, e in zip(sizes, amounts[2:rank],
                                                             amounts[rank + 2:])]
    strides = attr(node, "strides") or [1] * n
    dilations = attr(node, "dilations") or [1] * n
    return maps.tap_fractions(sizes, shape_y[2:], w.shape[2:], strides, dilations, begins)


def moved(graph, known, node, x: str, y: str, f_x: Field) -> Field | None:
    """Layout ops: the axis moved (Transpose, Reshape), cropped (Slice), padded (Pad)."""
    shape_x, shape_y = graph.shape(x), graph.shape(y)
    axis = f_x.axis
    if not shape_x or not shape_y:
        return None
    if node.op_type in ("Dropout", "Identity"):
        return f_x
    if node.op_type == "Transpose":
        perm = attr(node, "perm")
        perm = list(perm) if perm is not None else list(range(len(shape_x)))[::-1]
        head = None if f_x.head_axis is None else perm.index(f_x.head_axis)
        return replace(f_x, axis=perm.index(axis), head_axis=head)
    if node.op_type in ("Reshape", "Squeeze", "Unsqueeze"):
        return _reshaped(f_x, shape_x, shape_y)
    if node.op_type == "Gather":
        return _gathered(graph, node, f_x, shape_x)
    if len(shape_x) != len(shape_y) or f_x.head_axis is not None:
        return None
    if node.op_type == "Slice" and shape_y[axis] != shape_x[axis]:
        index = sliced(graph, node, shape_x, axis)
        if index is None or len(index) != shape_y[axis]:
            return None
        return Field(axis, f_x.cov[np.ix_(index, index)])
    if shape_y[axis] != shape_x[axis]:
        return None
    if shape_x == shape_y:
        return f_x
    return Field(axis, maps.rescaled(f_x.cov, variances(known[y], shape_y, axis)))


def _reshaped(f_x: Field, shape_x, shape_y) -> Field | None:
    """The axis kept (its size and the product of the axes after it), or split into heads
    ``[H, n / H]`` (the blocks on the diagonal kept), or heads kept; else None."""
    axis, after = f_x.axis, int(np.prod(shape_x[f_x.axis + 1:]))
    n = f_x.cov.shape[-1]
    for b in range(len(shape_y)):
        if shape_y[b] != n or int(np.prod(shape_y[b + 1:])) != after:
            continue
        if f_x.head_axis is None:
            return Field(b, f_x.cov)
        if (b > 0 and f_x.head_axis == axis - 1 and shape_y[b - 1] == shape_x[axis - 1]):
            return replace(f_x, axis=b, head_axis=b - 1)
        return None
    if f_x.head_axis is not None:
        return _merged(f_x, shape_x, shape_y)
    for b in range(len(shape_y) - 1):
        heads, width = shape_y[b], shape_y[b + 1]
        if heads > 1 and heads * width == n and int(np.prod(shape_y[b + 2:])) == after:
            blocks = f_x.cov.reshape(heads, width, heads, width)
            return Field(b + 1, blocks[np.arange(heads), :, np.arange(heads), :], b)
    return None


def _merged(f_x: Field, shape_x, shape_y) -> Field | None:
    """Heads merged back into one axis ``[H, n] -> [H n]`` (a bidirectional recurrent layer's
    directions, ``[.., 2, H] -> [.., 2H]``): their joint covariance where known, else the
    blocks on the diagonal (the heads taken as independent)."""
    axis, head = f_x.axis, f_x.head_axis
    heads, n = f_x.cov.shape[0], f_x.cov.shape[-1]
    after = int(np.prod(shape_x[axis + 1:]))
    if head != axis - 1 or shape_x[head] != heads:
        return None
    for b in range(len(shape_y)):
        if shape_y[b] == heads * n and int(np.prod(shape_y[b + 1:])) == after:
            if f_x.joint is not None:
                return Field(b, f_x.joint)
            merged = np.zeros((heads * n, heads * n))
            for k in range(heads):
                merged[k * n:(k + 1) * n, k * n:(k + 1) * n] = f_x.cov[k]
            return Field(b, merged)
    return None


def _gathered(graph, node, f_x: Field, shape_x) -> Field | None:
    """Gather of constant indices along another axis than the field's and its heads' (a step
    of a sequence, ``y[:, -1]``): the axes after it shift by the indices' rank less one."""
    axis = int(attr(node, "axis") or 0) % len(shape_x)
    indices = graph.value(node.input[1]) if len(node.input) > 1 else None
    if indices is None or axis in (f_x.axis, f_x.head_axis):
        return None
    shift = np.ndim(indices) - 1

    def moved_axis(a):
        return a if a is None or a < axis else a + shift

    return replace(f_x, axis=moved_axis(f_x.axis), head_axis=moved_axis(f_x.head_axis))


def conv_reading(graph, known, z: str, depthwise: bool = False):
    """(node, input x, weight as float64, shape of x, shape of z) of the Conv writing ``z``
    with a constant weight of the maps' rank, x's and z's moments known; ``depthwise``: one
    output per input channel (groups = channels). None otherwise."""
    node_id = graph.producer.get(z)
    node = graph.node(node_id) if node_id is not None else None
    if node is None or node.op_type != "Conv" or len(node.input) < 2:
        return None
    x = node.input[0]
    w = graph.value(node.input[1])
    shape_x, shape_z = graph.shape(x), graph.shape(z)
    if (w is None or x not in known or z not in known or not shape_x or not shape_z
            or len(shape_x) != len(shape_z) or len(shape_z) < 3 or np.ndim(w) != len(shape_z)):
        return None
    w = np.asarray(w, dtype=np.float64)
    c = shape_z[1]
    if depthwise and (w.shape[1] != 1 or w.shape[0] != c or shape_x[1] != c):
        return None
    return node, x, w, shape_x, shape_z


def attr(node, name: str):
    for a in node.attribute:
        if a.name == name:
            return list(a.ints) if a.ints else (a.s if a.s else a.i)
    return None


def sliced(graph, node, shape, axis: int) -> np.ndarray | None:
    """The indices along ``axis`` a Slice (opset 10+: starts, ends, axes, steps) keeps."""
    values = [graph.value(n) if n else None for n in list(node.input[1:5])]
    if len(values) < 2 or values[0] is None or values[1] is None:
        return None
    starts, ends = np.asarray(values[0]).reshape(-1), np.asarray(values[1]).reshape(-1)
    axes = np.arange(len(starts))
    if len(values) > 2 and values[2] is not None:
        axes = np.asarray(values[2]).reshape(-1) % len(shape)
    steps = np.ones(len(starts), dtype=np.int64)
    if len(values) > 3 and values[3] is not None:
        steps = np.asarray(values[3]).reshape(-1)
    hit = np.flatnonzero(axes == axis)
    if len(hit) != 1:
        return None
    i = hit[0]
    return np.arange(shape[axis])[slice(*slice(int(starts[i]), int(ends[i]),
                                               int(steps[i])).indices(shape[axis]))]


