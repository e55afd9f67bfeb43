"""Softmax and LogSoftmax (the forward family is :mod:`onnxinit.rules.softmax`; MatMul of two
activations is in :mod:`.linear`)."""

from __future__ import annotations

from .registry import backward


@backward("Softmax")
def softmax(ctx, grads):
    """Y = softmax(X, axis):  dX = Y * (dY - sum_axis(dY * Y))."""
    y = ctx.node.output[0]
    axis = ctx.attr("axis", -1)
    inner = ctx.emit("ReduceSum", [ctx.emit("Mul", [grads[0], y]), ctx.ints([axis])], keepdims=1)
    return [ctx.emit("Mul", [y, ctx.emit("Sub", [grads[0], inner])])]


@backward("LogSoftmax")
def log_softmax(ctx, grads):
    """Y = log_softmax(X, axis):  dX = dY - exp(Y) * sum_axis(dY)."""
    y = ctx.node.output[0]
    axis = ctx.attr("axis", -1)
    total = ctx.emit("ReduceSum", [grads[0], ctx.ints([axis])], keepdims=1)
    return [ctx.emit("Sub", [grads[0], ctx.emit("Mul", [ctx.emit("Exp", [y]), total])])]
