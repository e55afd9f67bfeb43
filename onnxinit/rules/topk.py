"""TopK of a signal known exactly (variance 0 at every element).

``values, indices = TopK(x, k)`` along ``axis``: where every element of x is known exactly
(exact_values.py: Doge's dynamic-mask score ``exp(A softplus(dt))`` at ``A = 0``), the values
are known exactly too, ``values = x[..., i_1..i_k, ...]`` with the k indices in onnxruntime's
order (largest first, or smallest with ``largest = 0``; equal values the lower index first);
the indices are an integer tensor, read by its consumers through exact_values.exact_tensor.
What is not modelled: TopK of a random signal (the k largest of a row: extreme order
statistics), left to the empirical fallback.
"""

from __future__ import annotations

import numpy as np

from ..moments import compressed
from .context import RuleContext, RuleError
from .exact_values import exact_tensor
from .registry import rule


@rule("TopK")
def topk(inputs, ctx: RuleContext):
    """values: E = x at the k selected positions of each row (largest first, ties by lower
    index), Var = 0, when Var x = 0 everywhere; else the empirical fallback."""
    x = inputs[0]
    shape = ctx.graph.shape(ctx.node.input[0])
    if x is None or shape is None or not np.all(x.var == 0) or x.rows is not None:
        raise RuleError("TopK of a random signal (the k largest of a row) is not modelled")
    k = ctx.const(1) if ctx.opset >= 10 else np.asarray(ctx.attr("k", 0))
    if k is None:
        k = exact_tensor(ctx, ctx.node.input[1])
    if k is None:
        raise RuleError("k is not known")
    value = np.broadcast_to(x.mean, tuple(int(d) for d in shape))
    axis = int(ctx.attr("axis", -1)) % value.ndim
    k = int(np.ravel(k)[0])
    key = -value if int(ctx.attr("largest", 1)) else value
    order = np.argsort(key, axis=axis, kind="stable")  # ties: the lower index first
    picked = np.take(order, np.arange(k), axis=axis)
    values = np.take_along_axis(value, picked, axis=axis)
    return [compressed(values, np.zeros_like(values)), None][: len(ctx.node.output)]
