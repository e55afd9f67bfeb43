"""A log-sum-exp written out with its shift: ``log(sum_k exp(x_k - s)) + s``.

TensorFlow's ``reduce_logsumexp`` (and most hand-written stable versions) subtract the row's
maximum before the exponential and add it back after the log. The two terms are strongly
anti-correlated (a larger maximum lowers the shifted log-sum), so adding them as independent
overstates the variance (Keras' Lambda of ``tf.reduce_logsumexp``: 10x). For any ``s`` that is
constant along the reduced axes the sum is the identity

    log(sum_k exp(x_k - s)) + s = log(sum_k exp(x_k)) = logsumexp(x)

so the Add is ReduceLogSumExp of ``x`` over the same axes (``reduce.logsumexp_moments``), with
``s`` whatever it is (the maximum, or anything else broadcast along the reduced axes).

Recognised (the Add's two operands, either order): ``Log(ReduceSum(Exp(Sub(x, s))))`` and a
tensor ``t`` with ``root(t) == root(s)``, where ``root`` follows value-preserving ops
(Identity, Reshape, Squeeze, Unsqueeze, Flatten) and TensorFlow's finite guard ``where(
is_finite(m), m, 0)`` (tf2onnx writes it as ``Cast(finite) * m + c * Cast(not finite)``, or a
``Where``), which is ``m`` on finite inputs; ``s`` must have size 1 along every reduced axis.
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from .context import RuleContext
from .reduce import logsumexp_moments
from .reduce_axes import reduced_axes
from .shift_root import producer, root

def _shifted_sum(ctx: RuleContext, log_input: str):
    """(x, s, ReduceSum node id) of ``Log(ReduceSum(Exp(Sub(x, s))))``, else None."""
    graph = ctx.graph
    log_id, log = producer(graph, log_input)
    if log is None or log.op_type != "Log":
        return None
    sum_id, red = producer(graph, log.input[0])
    if red is None or red.op_type != "ReduceSum":
        return None
    _, exp = producer(graph, red.input[0])
    if exp is None or exp.op_type != "Exp":
        return None
    _, sub = producer(graph, exp.input[0])
    if sub is None or sub.op_type != "Sub" or len(sub.input) != 2:
        return None
    return sub.input[0], sub.input[1], sum_id


def shifted_logsumexp(inputs, ctx: RuleContext) -> Moments | None:
    """The Add ``log(sum exp(x - s)) + s`` as ReduceLogSumExp of x
    (``reduce.logsumexp_moments``), or None when the node is not one."""
    node = ctx.node
    if node.op_type != "Add" or len(node.input) != 2 or ctx.known is None:
        return None
    if any(m is None for m in inputs[:2]):
        return None
    graph = ctx.graph
    for i in (0, 1):
        found = _shifted_sum(ctx, node.input[i])
        if found is None:
            continue
        x, s, sum_id = found
        if root(graph, node.input[1 - i]) != root(graph, s) or x not in ctx.known:
            continue
        x_shape, s_shape = graph.shape(x), graph.shape(s)
        if x_shape is None or s_shape is None or len(s_shape) > len(x_shape):
            continue
        sum_ctx = ctx.for_node(sum_id)
        rank = len(x_shape)
        axes = reduced_axes(sum_ctx, rank)
        if axes is None:
            continue
        s_full = (1,) * (rank - len(s_shape)) + tuple(s_shape)
        if any(s_full[a] != 1 for a in axes):
            continue  # the shift varies along a reduced axis: no identity
        keepdims = bool(sum_ctx.attr("keepdims", 1))
        out = logsumexp_moments(ctx.known[x], tuple(x_shape), axes, keepdims, ctx)
        if np.shape(out.mean) and len(np.shape(out.mean)) != len(ctx.out_shape(0)):
            continue
        return out
    return None


__all__ = ["shifted_logsumexp"]
