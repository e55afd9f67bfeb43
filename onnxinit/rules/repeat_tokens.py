"""A signal repeated along a new axis starts a token field of copies: ``Tile`` or ``Expand`` of
``x [.., 1, ..]`` to ``n`` along that axis makes ``n`` tokens that are one value,
``Cov(y[.., s, ..], y[.., t, ..]) = Var x`` for every s, t (the field ``ones(n, n)``).

Keras' ``RepeatVector`` (an LSTM autoencoder's or seq2seq decoder's input: the encoder's last
state at every step; tf2onnx writes ``ExpandDims`` and ``Tile``) feeds a recurrent layer whose
rule reads its input's correlation across steps from that field (:mod:`.recurrent_scan`):
without it the steps were independent draws, and the decoder's state, which accumulates one
drive ``n`` times coherently, read 0.26-0.37x of its variance. The field follows the layout
ops after the repeat (:mod:`.token_layout`). Only a vector per sample is repeated so: an
input with at most two axes longer than 1 (the batch and the features; tf2onnx's ``[B, 1, 1,
F]`` to ``[B, 1, n, F]``), the features not the repeated axis. An Expand of keys and values to
more heads (grouped-query attention, ``[B, kv, 1, S, D]`` to ``[B, kv, n, S, D]``) is a copy
too, but along the heads, which the attention rules read as heads, not as tokens. None
of this where the repeated tensor is no signal, more than one axis is repeated, the ranks
differ, or ``n`` exceeds ``MAX_TOKENS``.
"""

from __future__ import annotations

import numpy as np

from .context import RuleContext
from .token_field import attach

MAX_TOKENS = 1024  # a longer repeat's field (n x n) is not built
REPEATS = frozenset({"Tile", "Expand"})


def entry(ctx: RuleContext, outputs: list) -> list:
    """``outputs`` with the copies' field where the node repeats one signal along one axis of
    size 1; unchanged otherwise."""
    if not outputs or outputs[0] is None or outputs[0].tokens is not None:
        return outputs
    node, graph = ctx.node, ctx.graph
    if not node.input or not graph.is_signal(node.input[0]):
        return outputs
    in_shape, out_shape = graph.shape(node.input[0]), graph.shape(node.output[0])
    if not in_shape or not out_shape or len(in_shape) != len(out_shape):
        return outputs
    axes = [a for a, (i, o) in enumerate(zip(in_shape, out_shape)) if i != o]
    if (len(axes) != 1 or axes[0] == len(out_shape) - 1 or in_shape[axes[0]] != 1
            or sum(d > 1 for d in in_shape) > 2 or not 1 < out_shape[axes[0]] <= MAX_TOKENS):
        return outputs
    n = int(out_shape[axes[0]])
    return [attach(outputs[0], out_shape, axes, np.ones((n, n)))] + list(outputs[1:])


__all__ = ["MAX_TOKENS", "REPEATS", "entry"]
