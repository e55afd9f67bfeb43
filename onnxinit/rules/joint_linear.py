"""Linear nodes that move or mix positions, on joint draws (:mod:`.joint_samples`).

A leaf of an element-wise region that is a token of a sequence (``Gather(key, t, axis=1)``)
shares its randomness with the region's other tokens of the same sequence when the sequence
was built from shifted copies of one tensor (RWKV's token shift: ``mix x_t + (1 - mix)
x_{t-1}``, a ``Pad`` by one token, then a dense layer). The draws follow such leaves back
through these nodes to a tensor drawn element by element (its elements independent, as every
rule takes them), so that ``Cov(k_t, k_{t-1}) = sum_d W_dc^2 mix_d (1 - mix_d) Var x_d``
comes out of the draws:

    Gather   (constant indices)           y = take(x, idx, axis)
    Slice    (constant starts/ends/axes/steps)
    Pad      (mode constant, constant pads, a negative pad crops)
    MatMul   (a constant 2-D right operand) y = x W

Draws are ``[n, *shape]`` with the batch axis (0) of size 1 (batch elements are the draws);
an axis that one of these nodes moves must be drawn in full (``materialised``), else the node
is not followed (its output is drawn as a leaf).
"""

from __future__ import annotations

import numpy as np

from .context import RuleContext

LINEAR = ("Gather", "Slice", "Pad", "MatMul")


def linear_node(graph, tensor: str):
    """The producer of ``tensor`` when it is one of the linear nodes above with one signal
    input (its first) and every other input a constant, else None."""
    node_id = graph.producer.get(tensor)
    if node_id is None:
        return None
    node = graph.node(node_id)
    if node.domain not in ("", "ai.onnx") or node.op_type not in LINEAR:
        return None
    if len(node.output) != 1 or not node.input or not graph.is_signal(node.input[0]):
        return None
    if not all(graph.is_constant(n) for n in node.input[1:] if n):
        return None
    if node.op_type == "Pad":
        mode = next((a.s for a in node.attribute if a.name == "mode"), b"constant")
        if mode != b"constant" or graph.opset < 11:
            return None
    if node.op_type == "Slice" and graph.opset < 10:
        return None
    if node.op_type == "MatMul":
        w = graph.value(node.input[1])
        if w is None or np.ndim(w) != 2:
            return None
    return node


def _full(x: np.ndarray, axis: int, size: int) -> bool:
    """Axis ``axis`` of the tensor (``axis + 1`` of the draws) is drawn in full."""
    return size == 1 or x.shape[axis + 1] == size


def apply_linear(ctx: RuleContext, node, x: np.ndarray) -> np.ndarray | None:
    """The node applied to draws ``x`` ``[n, *shape]``; None when an axis it moves is not
    drawn in full, or it moves the batch axis."""
    graph = ctx.graph
    shape = graph.shape(node.input[0])
    if shape is None or x.ndim != len(shape) + 1:
        return None
    rank = len(shape)
    op = node.op_type
    if op == "MatMul":
        w = np.asarray(graph.value(node.input[1]), dtype=x.dtype)
        if rank < 2 or not _full(x, rank - 1, shape[-1]):
            return None
        return np.matmul(x, w)
    if op == "Gather":
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0) % rank
        idx = np.asarray(graph.value(node.input[1]), dtype=np.int64)
        if axis == 0 or not _full(x, axis, shape[axis]):
            return None
        idx = np.where(idx < 0, idx + shape[axis], idx)
        return np.take(x, idx, axis=axis + 1)
    if op == "Slice":
        values = [graph.value(n) if n else None for n in list(node.input[1:5]) + [""] * 4][:4]
        starts, ends, axes, steps = values
        if starts is None or ends is None:
            return None
        starts, ends = np.ravel(starts).tolist(), np.ravel(ends).tolist()
        axes = list(range(len(starts))) if axes is None else np.ravel(axes).tolist()
        steps = [1] * len(starts) if steps is None else np.ravel(steps).tolist()
        index = [slice(None)] * (rank + 1)
        for a, s, e, t in zip(axes, starts, ends, steps):
            a = int(a) % rank
            if a == 0 or not _full(x, a, shape[a]):
                return None
            index[a + 1] = slice(*slice(int(s), int(e), int(t)).indices(shape[a]))
        return x[tuple(index)]
    # Pad
    pads = graph.value(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    if pads is None:
        return None
    pads = np.ravel(pads).astype(np.int64)
    value = 0.0
    if len(node.input) > 2 and node.input[2]:
        c = graph.value(node.input[2])
        if c is None:
            return None
        value = float(np.ravel(c)[0]) if np.size(c) else 0.0
    axes = list(range(rank))
    if len(node.input) > 3 and node.input[3]:
        found = graph.value(node.input[3])
        if found is None:
            return None
        axes = [int(a) % rank for a in np.ravel(found)]
    half = len(pads) // 2
    if half != len(axes):
        return None
    out = x
    for a, begin, end in zip(axes, pads[:half], pads[half:]):
        if begin == 0 and end == 0:
            continue
        if a == 0 or not _full(out, a, shape[a]):
            return None
        n = out.shape[a + 1]
        out = np.take(out, np.arange(max(-begin, 0), n - max(-end, 0)), axis=a + 1)
        widths = [(0, 0)] * out.ndim
        widths[a + 1] = (max(begin, 0), max(end, 0))
        out = np.pad(out, widths, constant_values=value)
    return out


def selects_positions(graph, node) -> bool:
    """A Gather or Slice (constant indices) that selects along a position axis: not the batch
    axis, not the last (feature) axis, whose elements every rule takes as independent. Two
    selections of one sequence are correlated when its positions are (a shifted copy mixed
    in): :mod:`.joint_samples` draws them jointly."""
    if node.op_type not in ("Gather", "Slice"):
        return False
    shape = graph.shape(node.input[0])
    if shape is None:
        return False
    rank = len(shape)
    if node.op_type == "Gather":
        axes = [next((a.i for a in node.attribute if a.name == "axis"), 0) % rank]
    else:
        found = graph.value(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        starts = graph.value(node.input[1]) if len(node.input) > 1 else None
        if starts is None:
            return False
        axes = (list(range(np.size(starts))) if found is None
                else [int(a) % rank for a in np.ravel(found)])
    return all(0 < a < rank - 1 for a in axes)


def shifts_positions(graph, node) -> bool:
    """A Pad with a nonzero leading pad, or a Slice with a nonzero start, along a position axis
    (not the batch axis, not the last): its output's position t holds another position of its
    input (RWKV's token shift, ``x_{t-1}`` at t)."""
    shape = graph.shape(node.input[0]) if node.input else None
    if shape is None or node.op_type not in ("Pad", "Slice"):
        return False
    rank = len(shape)
    if node.op_type == "Pad":
        pads = graph.value(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        if pads is None:
            return False
        pads = np.ravel(pads)
        found = graph.value(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        axes = (list(range(rank)) if found is None else [int(a) % rank for a in np.ravel(found)])
        begins = pads[:len(pads) // 2]
        return any(b != 0 and 0 < a < rank - 1 for a, b in zip(axes, begins))
    starts = graph.value(node.input[1]) if len(node.input) > 1 else None
    if starts is None:
        return False
    found = graph.value(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    axes = (list(range(np.size(starts))) if found is None
            else [int(a) % rank for a in np.ravel(found)])
    return any(s != 0 and 0 < a < rank - 1 for a, s in zip(axes, np.ravel(starts)))
