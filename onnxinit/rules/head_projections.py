"""The projections of an attention's queries, keys and values, found from Q K^T and P V back
through layout ops to a MatMul by a constant 2-D weight (:func:`projection`), for
:mod:`.value_selection` and :mod:`.attention_response`."""

from __future__ import annotations

import numpy as np

from .context import RuleContext
from .unit_rows import is_unit_rows

_LAYOUT = ("Transpose", "Reshape", "Unsqueeze", "Squeeze", "Expand", "Cast", "Identity",
           "Dropout")


def _stripped(graph, name: str) -> str:
    while (nid := graph.producer.get(name)) is not None and graph.node(nid).op_type in (
            "Cast", "Identity"):
        name = graph.node(nid).input[0]
    return name


def _axes(graph, node, rank: int) -> list[int] | None:
    """A Squeeze's or Unsqueeze's axes (attribute, or input 1 from opset 13), made
    non-negative for ``rank``; None when unknown."""
    axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = graph.value(node.input[1])
        axes = None if value is None else [int(a) for a in np.reshape(value, -1)]
    return None if axes is None or not rank else sorted(a % rank for a in axes)


def _picked_axis(graph, node, axis: int | None):
    """The axis of ``node``'s input that output axis ``axis`` (a picked part of a fused
    projection) comes from, through a Transpose, Squeeze or Unsqueeze (torch's packed
    ``in_proj``: ``[T, N, 3 E] -> [T, N, 3, E]``, unsqueezed, transposed, squeezed, then
    ``proj[i]``); None when it is lost."""
    if axis is None:
        return None
    if node.op_type == "Transpose":
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        return perm[axis] if perm is not None and axis < len(perm) else None
    if node.op_type == "Squeeze":
        rank = len(graph.shape(node.input[0]) or ())
        axes = _axes(graph, node, rank)
        kept = [i for i in range(rank) if i not in (axes or ())]
        return kept[axis] if axes and axis < len(kept) else None
    if node.op_type == "Unsqueeze":
        axes = _axes(graph, node, len(graph.shape(node.output[0]) or ()))
        return None if axes is None or axis in axes else axis - sum(a < axis for a in axes)
    if node.op_type in ("Cast", "Identity", "Dropout"):
        return axis
    return None


def _scaled(graph, node) -> str | None:
    """The signal of a Mul or Div by a constant scalar (keys scaled before Q K^T: the scale
    cancels in the selection ratio), else None."""
    if node.op_type not in ("Mul", "Div") or len(node.input) != 2:
        return None
    scale = graph.value(node.input[1])
    if scale is None and node.op_type == "Mul":
        scale, name = graph.value(node.input[0]), node.input[1]
    else:
        name = node.input[0]
    return name if scale is not None and np.size(scale) == 1 and graph.is_signal(name) else None


def projection(ctx: RuleContext, name: str):
    """(x, W [D, N]) when ``name`` is ``x @ W`` (+ bias) through layout ops (a Reshape into
    heads, or none: a single head, one plain 3-D MatMul of the tokens), else None. A fused
    projection split by a Gather of one index along an axis that a Reshape split off its
    columns (Swin's ``qkv``: ``[B, T, 3 D] -> [B, T, 3, H, d]``,
    permuted, ``qkv[i]``) gives that block of W's columns; a row scaled to unit length
    (``F.normalize``: cosine attention) is read as its numerator (the scale of a key cancels
    in the selection ratio)."""
    graph = ctx.graph
    picked = None  # (axis of the current tensor, index) of a Gather of a fused projection
    columns = None  # (index, block): W's columns [index * block, (index + 1) * block)
    for _ in range(16):
        nid = graph.producer.get(name)
        if nid is None:
            return None
        node = graph.node(nid)
        op = node.op_type
        if op == "Gather" and picked is None and columns is None:
            index = graph.value(node.input[1]) if len(node.input) > 1 else None
            if index is None or np.size(index) != 1 or np.ndim(index) != 0:
                return None
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            rank = len(graph.shape(node.input[0]) or ())
            picked = (axis % rank if rank else None, int(index))
            name = node.input[0]
        elif op == "Div" and is_unit_rows(ctx.for_node(nid)):
            name = node.input[0]
        elif _scaled(graph, node) is not None:
            name = _scaled(graph, node)
        elif op == "Reshape" and picked is not None:
            out_shape, in_shape = graph.shape(node.output[0]), graph.shape(node.input[0])
            axis = picked[0]
            if axis is None or not out_shape or not in_shape:
                return None
            block = int(np.prod(out_shape[axis + 1:]))
            if int(np.prod(out_shape[axis:])) != in_shape[-1]:
                return None
            columns, picked = (picked[1], block), None
            name = node.input[0]
        elif op in _LAYOUT:
            if picked is not None:
                picked = (_picked_axis(graph, node, picked[0]), picked[1])
                if picked[0] is None:
                    return None
            name = node.input[0]
        elif op == "Add":
            signals = [t for t in node.input if graph.is_signal(t)]
            if len(signals) != 1:
                return None
            name = signals[0]
        elif op == "MatMul" and graph.is_constant(node.input[1]) and picked is None:
            w = graph.value(node.input[1])
            if w is None or w.ndim != 2:
                return None
            w = np.asarray(w, dtype=np.float64)
            if columns is not None:
                w = w[:, columns[0] * columns[1]:(columns[0] + 1) * columns[1]]
            return _stripped(graph, node.input[0]), w
        else:
            return None
    return None


def head_blocks(w: np.ndarray, d: int) -> np.ndarray | None:
    """W [D, H d] as [H, D, d] (head-major columns)."""
    n = w.shape[1]
    if d <= 0 or n % d:
        return None
    return w.reshape(w.shape[0], n // d, d).transpose(1, 0, 2)


def keys_first(softmax, shape) -> bool | None:
    """Whether a softmax normalises its logits' axis -2 (tf2onnx's ``K Q^T`` with ``axis =
    2``, Keras' attention with dropout) rather than the last; None for another axis or an
    unknown shape."""
    if not shape or len(shape) < 2:
        return None
    axis = next((a.i for a in softmax.attribute if a.name == "axis"), -1) % len(shape)
    return {len(shape) - 1: False, len(shape) - 2: True}.get(axis)


__all__ = ["head_blocks", "keys_first", "projection"]
