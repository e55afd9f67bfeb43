"""Float32 absorption in the joint draws (:mod:`.joint_samples`): the type a region tensor is
evaluated in, and the Add or Sub whose constant is so large that float32 rounding drops the
signal (``-1e38 - x`` is ``-1e38`` in onnxruntime; exact arithmetic gives x's variance)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from .context import RuleContext


def dtype_of(graph, tensor: str):
    """float64 for a double tensor, else float32 (the draws of narrower types too)."""
    return np.float64 if graph.dtypes.get(tensor) == TensorProto.DOUBLE else np.float32


def absorbed(inputs, ctx: RuleContext) -> bool:
    """An Add or Sub in float32 (or narrower) of one signal x and a constant c so large that
    rounding drops x: ``|c| 2^-24 > |mu| + 8 sigma`` everywhere."""
    node, graph = ctx.node, ctx.graph
    if node.op_type not in ("Add", "Sub") or dtype_of(graph, node.output[0]) is np.float64:
        return False
    signals = [m for m in inputs if m is not None]
    if len(signals) != 1 or len(node.input) != 2:
        return False
    c = ctx.const(1 - inputs.index(signals[0]))
    if c is None or np.size(c) == 0:
        return False
    x = signals[0]
    scale = float(np.max(np.abs(x.mean)) + 8 * np.sqrt(np.max(x.var)))
    return bool(np.min(np.abs(np.asarray(c, np.float64))) * 2.0**-24 > scale)
