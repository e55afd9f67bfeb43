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

_PASS = frozenset({"Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten"})
_BOOLEAN = frozenset({"IsNaN", "IsInf", "Or", "And", "Not", "Xor", "Equal", "Less", "Greater"})


def _producer(graph, tensor: str):
    node_id = graph.producer.get(tensor)
    return (None, None) if node_id is None else (node_id, graph.node(node_id))


def _guard_of(graph, cast: str) -> bool:
    """``cast`` is a Cast of a boolean computed by IsNaN/IsInf/Not/Or ... ops."""
    _, node = _producer(graph, cast)
    if node is None or node.op_type != "Cast":
        return False
    _, inner = _producer(graph, node.input[0])
    return inner is not None and inner.op_type in _BOOLEAN


def _guarded(graph, node) -> str | None:
    """The ``m`` of ``Cast(b1) * m + c * Cast(b2)`` (a finite guard), else None."""
    if node.op_type != "Add" or len(node.input) != 2:
        return None
    found = None
    for name in node.input:
        _, mul = _producer(graph, name)
        if mul is None or mul.op_type != "Mul" or len(mul.input) != 2:
            return None
        a, b = mul.input
        if _guard_of(graph, a) or _guard_of(graph, b):
            other = b if _guard_of(graph, a) else a
            if graph.is_constant(other):
                continue  # c * Cast(not finite): the fallback value
            if found is not None:
                return None
            found = other
        else:
            return None
    return found


def root(graph, tensor: str) -> str:
    """``tensor`` followed back through value-preserving ops and finite guards."""
    for _ in range(16):
        _, node = _producer(graph, tensor)
        if node is None:
            return tensor
        if node.op_type in _PASS:
            tensor = node.input[0]
        elif node.op_type == "Where" and len(node.input) == 3 and (
                graph.is_constant(node.input[2]) and not graph.is_constant(node.input[1])):
            tensor = node.input[1]
        elif (m := _guarded(graph, node)) is not None:
            tensor = m
        else:
            return tensor
    return tensor


def _shifted_sum(ctx: RuleContext, log_input: str):
    """(x, s, ReduceSum node id) of ``Log(ReduceSum(Exp(Sub(x, s))))``, else None."""
    graph = ctx.graph
    log_id, log = _producer(graph, log_input)
    if log is None or log.op_type != "Log":
        return None
    sum_id, red = _producer(graph, log.input[0])
    if red is None or red.op_type != "ReduceSum":
        return None
    _, exp = _producer(graph, red.input[0])
    if exp is None or exp.op_type != "Exp":
        return None
    _, sub = _producer(graph, exp.input[0])
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


__all__ = ["root", "shifted_logsumexp"]
