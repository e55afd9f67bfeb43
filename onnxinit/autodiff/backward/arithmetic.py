"""Element-wise arithmetic with numpy broadcasting; every operand gradient is summed back over
the axes it was broadcast along (``ctx.unbroadcast``). Concat, whose forward rule mixes its
operands' statistics, is here too (the forward family is :mod:`onnxinit.rules.arithmetic`)."""

from __future__ import annotations

from .registry import backward


def _out_shape(ctx):
    return ctx.shape(ctx.node.output[0])


@backward("Add", "Sub")
def add_sub(ctx, grads):
    """Add: dA = dY, dB = dY.  Sub: dA = dY, dB = -dY (each summed over broadcast axes)."""
    (g,) = grads
    a, b = ctx.node.input
    shape = _out_shape(ctx)
    da = ctx.unbroadcast(g, shape, a) if ctx.requires(0) else None
    db = None
    if ctx.requires(1):
        db = ctx.unbroadcast(g, shape, b)
        db = ctx.emit("Neg", [db]) if ctx.node.op_type == "Sub" else db
    return [da, db]


@backward("Mul")
def mul(ctx, grads):
    """Y = A * B:  dA = dY * B,  dB = dY * A."""
    (g,) = grads
    a, b = ctx.node.input
    shape = _out_shape(ctx)
    da = ctx.unbroadcast(ctx.emit("Mul", [g, b]), shape, a) if ctx.requires(0) else None
    db = ctx.unbroadcast(ctx.emit("Mul", [g, a]), shape, b) if ctx.requires(1) else None
    return [da, db]


@backward("Div")
def div(ctx, grads):
    """Y = A / B:  dA = dY / B,  dB = -(dY / B) * Y (the quotient dY / B shared by both, the
    negation applied after summing over B's broadcast axes)."""
    (g,) = grads
    a, b = ctx.node.input
    y = ctx.node.output[0]
    shape = _out_shape(ctx)
    quotient = ctx.emit("Div", [g, b])
    da = ctx.unbroadcast(quotient, shape, a) if ctx.requires(0) else None
    db = None
    if ctx.requires(1):
        ratio = ctx.emit("Mul", [quotient, y])
        db = ctx.emit("Neg", [ctx.unbroadcast(ratio, shape, b)])
    return [da, db]


@backward("Pow")
def power(ctx, grads):
    """Y = A ** B:  dA = dY * B * A ** (B - 1),  dB = dY * Y * log(A)."""
    (g,) = grads
    a, b = ctx.node.input
    y = ctx.node.output[0]
    shape = _out_shape(ctx)
    da = db = None
    if ctx.requires(0):
        exponent = ctx.value(b)
        if exponent is not None and exponent.size == 1 and float(exponent) == 2.0:
            local = ctx.emit("Mul", [a, ctx.const(2.0, like=a)])
        else:
            b_like_a = ctx.emit("CastLike", [b, a])
            lowered = ctx.emit("Sub", [b_like_a, ctx.const(1.0, like=a)])
            local = ctx.emit("Mul", [b_like_a, ctx.emit("Pow", [a, lowered])])
        da = ctx.unbroadcast(ctx.emit("Mul", [g, local]), shape, a)
    if ctx.requires(1):
        local = ctx.emit("Mul", [y, ctx.emit("Log", [a])])
        db = ctx.unbroadcast(ctx.emit("Mul", [g, local]), shape, b)
    return [da, db]


@backward("Sum")
def sum_(ctx, grads):
    """Y = sum_i X_i:  dX_i = dY."""
    (g,) = grads
    shape = _out_shape(ctx)
    return [
        ctx.unbroadcast(g, shape, x) if ctx.requires(i) else None
        for i, x in enumerate(ctx.node.input)
    ]


@backward("Mean")
def mean(ctx, grads):
    """Y = (1/n) sum_i X_i:  dX_i = dY / n."""
    (g,) = grads
    shape = _out_shape(ctx)
    scaled = ctx.emit("Mul", [g, ctx.const(1.0 / len(ctx.node.input), like=ctx.node.output[0])])
    return [
        ctx.unbroadcast(scaled, shape, x) if ctx.requires(i) else None
        for i, x in enumerate(ctx.node.input)
    ]


@backward("Max", "Min")
def max_min(ctx, grads):
    """Y = max_i X_i (or min):  dX_i = dY * [X_i == Y] (ties pass the gradient to each)."""
    (g,) = grads
    y = ctx.node.output[0]
    shape = _out_shape(ctx)
    out = []
    for i, x in enumerate(ctx.node.input):
        if not ctx.requires(i):
            out.append(None)
            continue
        chosen = ctx.emit("Equal", [x, y])
        local = ctx.emit("Where", [chosen, g, ctx.const(0.0, like=y)])
        out.append(ctx.unbroadcast(local, shape, x))
    return out


@backward("Where")
def where(ctx, grads):
    """Y = where(C, A, B):  dA = where(C, dY, 0),  dB = where(C, 0, dY)."""
    (g,) = grads
    cond, a, b = ctx.node.input
    shape = _out_shape(ctx)
    zero = ctx.const(0.0, like=ctx.node.output[0])
    da = db = None
    if ctx.requires(1):
        da = ctx.unbroadcast(ctx.emit("Where", [cond, g, zero]), shape, a)
    if ctx.requires(2):
        db = ctx.unbroadcast(ctx.emit("Where", [cond, zero, g]), shape, b)
    return [None, da, db]


@backward("Concat")
def concat(ctx, grads):
    """Y = concat(X_1..X_n, axis):  dX_i = the slice of dY that X_i occupies."""
    axis = ctx.attr("axis")
    sizes = [ctx.shape(x)[axis] for x in ctx.node.input]
    parts = ctx.emit("Split", [grads[0], ctx.ints(sizes)], len(sizes), axis=axis)
    parts = [parts] if len(sizes) == 1 else parts
    return [part if ctx.requires(i) else None for i, part in enumerate(parts)]
