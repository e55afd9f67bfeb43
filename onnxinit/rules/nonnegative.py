"""Tensors that are nonnegative by how the graph computes them: a mean or sum of squares (the
statistic of a decomposed RMSNorm or LayerNorm), an absolute value, a ReLU, plus or times
nonnegative constants. Their predicted law is a Gaussian of the same mean and variance, which
over a few terms (a 16-wide row) puts real mass below zero where the tensor has none; a
square root of it is then taken over the nonnegative part (:func:`.activations.sqrt`) instead
of refused (the fallback measured NaN on the negative draws and stopped the analysis)."""

from __future__ import annotations

import numpy as np

from .context import RuleContext

# ops whose output is >= 0 whatever their input
_NONNEGATIVE_OPS = {"Abs", "Relu", "Exp", "Softplus", "Sigmoid", "ReduceSumSquare", "ReduceL1",
                    "ReduceL2", "Sqrt"}
# ops that keep a nonnegative first input nonnegative (their other inputs shape or index it)
_KEEPING_OPS = {"Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose",
                "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "GlobalAveragePool",
                "AveragePool", "MaxPool", "Expand", "Slice", "Gather", "Concat"}


def _even_power(ctx: RuleContext, node) -> bool:
    value = ctx.graph.value(node.input[1]) if len(node.input) > 1 else None
    return value is not None and np.all(np.mod(np.asarray(value, dtype=np.float64), 2) == 0)


def nonnegative(ctx: RuleContext, tensor: str, depth: int = 8) -> bool:
    """True when ``tensor`` is >= 0 by construction (see the module docstring)."""
    graph = ctx.graph
    value = graph.value(tensor)
    if value is not None:
        return bool(np.all(np.asarray(value) >= 0))
    node_id = graph.producer.get(tensor)
    if node_id is None or depth == 0:
        return False
    node = graph.node(node_id)
    op, inputs = node.op_type, [i for i in node.input if i]
    if op in _NONNEGATIVE_OPS:
        return True
    if op == "Pow":
        return _even_power(ctx, node)
    if op == "Mul" and len(inputs) == 2 and inputs[0] == inputs[1]:
        return True
    if op in ("Add", "Mul", "Max", "Concat", "Sum"):
        return all(nonnegative(ctx, i, depth - 1) for i in inputs)
    if op in _KEEPING_OPS:
        return bool(inputs) and nonnegative(ctx, inputs[0], depth - 1)
    return False
