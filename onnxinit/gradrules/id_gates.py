"""Backward of a product by a mask of the token ids whose zeros the softmax masks anyway.

Keras' ``logits * keep + big * (1 - keep)`` (tf2onnx's SelectV2), ``keep`` a 0/1 mask computed
from the token ids (rules/id_masks.py): the gradient of the product, ``dy``, is the softmax's
gradient at its input, which is 0 wherever the key is masked, that is wherever ``keep = 0``.
So ``dx = keep dy = dy`` exactly, where the independent product rule gives
``E[keep^2] E[dy^2]``, short by the share of masked keys (0.74x with a quarter masked).

Checked on the forward's samples of the ids (the same draws, in the same order, for the mask
and for the softmax's input): every element where ``keep`` is 0 is masked in that sample
(``MASK_GAP`` below its row's largest mean), and ``keep`` takes only the values 0 and 1.
"""

from __future__ import annotations

import numpy as np

from ..rules.id_masks import latest_samples, sampled_rows
from ..rules.softmax_rows import MASK_GAP

_PASSING = frozenset({"Add", "Sub", "Cast", "Identity"})
_DEPTH = 4


def _softmax_input(graph, tensor: str) -> str | None:
    """The input of the Softmax over the last axis that ``tensor`` reaches through Add, Sub,
    Cast and Identity nodes (its only consumers), else None."""
    for _ in range(_DEPTH):
        consumers = graph.consumers.get(tensor, [])
        if len(consumers) != 1:
            return None
        node = graph.node(consumers[0][0])
        if node.op_type == "Softmax":
            shape = graph.shape(tensor)
            axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
            return tensor if shape and axis % len(shape) == len(shape) - 1 else None
        if node.op_type not in _PASSING:
            return None
        tensor = node.output[0]
    return None


def gated_by_masked_keys(graph, forward, gate: str, output: str) -> bool:
    """True when ``gate`` is a 0/1 mask of the token ids that is 0 only where the softmax
    ``output`` reaches masks the key, on every sample the forward drew (module docstring)."""
    logits = _softmax_input(graph, output)
    gate_s = latest_samples(graph, gate)
    rows = sampled_rows(graph, forward, logits) if logits is not None else None
    if rows is None or gate_s is None:
        return False
    mean = rows[0].mean
    if not np.all((gate_s == 0) | (gate_s == 1)) or gate_s.ndim > mean.ndim:
        return False
    n = min(gate_s.shape[0], mean.shape[0])
    gate_s = gate_s.reshape(gate_s.shape[:1] + (1,) * (mean.ndim - gate_s.ndim) + gate_s.shape[1:])
    top = np.max(np.where(np.isfinite(mean[:n]), mean[:n], -np.inf), axis=-1, keepdims=True)
    masked = ~np.isfinite(mean[:n]) | (mean[:n] < top - MASK_GAP)
    try:
        zero = np.broadcast_to(gate_s[:n] == 0, masked.shape)
    except ValueError:
        return False
    return bool(np.all(masked[zero]))


__all__ = ["gated_by_masked_keys"]
