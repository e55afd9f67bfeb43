"""Element-wise activations and other unary maps (the forward family is
:mod:`onnxinit.rules.activations`)."""

from __future__ import annotations

import math

from .registry import backward


def _where_positive(ctx, x, when_positive, otherwise):
    positive = ctx.emit("Greater", [x, ctx.const(0.0, like=x)])
    return ctx.emit("Where", [positive, when_positive, otherwise])


@backward("Relu")
def relu(ctx, grads):
    """Y = max(X, 0):  dX = dY * [X > 0], as a product with the cast mask (onnxruntime's CPU
    Where takes about twice as long as Cast + Mul; the results differ only for a non-finite dY
    where X <= 0, NaN instead of 0, and in the sign of zeros)."""
    x = ctx.node.input[0]
    positive = ctx.emit("Greater", [x, ctx.const(0.0, like=x)])
    return [ctx.emit("Mul", [grads[0], ctx.emit("Cast", [positive], to=ctx.elem_type(x))])]


@backward("LeakyRelu")
def leaky_relu(ctx, grads):
    """Y = X if X > 0 else alpha X:  dX = dY * (1 if X > 0 else alpha)."""
    (g,) = grads
    x = ctx.node.input[0]
    alpha = ctx.attr("alpha", 0.01)
    return [_where_positive(ctx, x, g, ctx.emit("Mul", [g, ctx.const(alpha, like=x)]))]


@backward("PRelu")
def prelu(ctx, grads):
    """Y = X if X > 0 else S X:  dX = dY * (1 if X > 0 else S),  dS = dY * (0 if X > 0 else X)."""
    (g,) = grads
    x, slope = ctx.node.input
    shape = ctx.shape(ctx.node.output[0])
    zero = ctx.const(0.0, like=x)
    dx = ds = None
    if ctx.requires(0):
        dx = _where_positive(ctx, x, g, ctx.emit("Mul", [g, slope]))
    if ctx.requires(1):
        ds = ctx.unbroadcast(_where_positive(ctx, x, zero, ctx.emit("Mul", [g, x])), shape, slope)
    return [dx, ds]


@backward("Sigmoid")
def sigmoid(ctx, grads):
    """Y = 1 / (1 + exp(-X)):  dX = dY * Y * (1 - Y)."""
    y = ctx.node.output[0]
    local = ctx.emit("Mul", [y, ctx.emit("Sub", [ctx.const(1.0, like=y), y])])
    return [ctx.emit("Mul", [grads[0], local])]


@backward("Tanh")
def tanh(ctx, grads):
    """Y = tanh(X):  dX = dY * (1 - Y^2)."""
    y = ctx.node.output[0]
    local = ctx.emit("Sub", [ctx.const(1.0, like=y), ctx.emit("Mul", [y, y])])
    return [ctx.emit("Mul", [grads[0], local])]


@backward("Erf")
def erf(ctx, grads):
    """Y = erf(X):  dX = dY * 2/sqrt(pi) * exp(-X^2)."""
    x = ctx.node.input[0]
    gauss = ctx.emit("Exp", [ctx.emit("Neg", [ctx.emit("Mul", [x, x])])])
    local = ctx.emit("Mul", [gauss, ctx.const(2.0 / math.sqrt(math.pi), like=x)])
    return [ctx.emit("Mul", [grads[0], local])]


@backward("Softplus")
def softplus(ctx, grads):
    """Y = log(1 + exp(X)):  dX = dY * sigmoid(X)."""
    return [ctx.emit("Mul", [grads[0], ctx.emit("Sigmoid", [ctx.node.input[0]])])]


@backward("HardSigmoid")
def hard_sigmoid(ctx, grads):
    """Y = clip(alpha X + beta, 0, 1):  dX = dY * alpha where 0 < alpha X + beta < 1, else 0."""
    x = ctx.node.input[0]
    alpha, beta = ctx.attr("alpha", 0.2), ctx.attr("beta", 0.5)
    pre = ctx.emit("Add", [ctx.emit("Mul", [x, ctx.const(alpha, like=x)]),
                           ctx.const(beta, like=x)])
    inside = ctx.emit("And", [ctx.emit("Greater", [pre, ctx.const(0.0, like=x)]),
                              ctx.emit("Less", [pre, ctx.const(1.0, like=x)])])
    scaled = ctx.emit("Mul", [grads[0], ctx.const(alpha, like=x)])
    return [ctx.emit("Where", [inside, scaled, ctx.const(0.0, like=x)])]


@backward("Clip")
def clip(ctx, grads):
    """Y = clip(X, lo, hi):  dX = dY where lo <= X <= hi, else 0 (bounds are not differentiated)."""
    x = ctx.node.input[0]
    (g,) = grads
    keep = None
    for index, op_type in ((1, "GreaterOrEqual"), (2, "LessOrEqual")):
        bound = ctx.input(index)
        if bound:
            test = ctx.emit(op_type, [x, bound])
            keep = test if keep is None else ctx.emit("And", [keep, test])
    dx = g if keep is None else ctx.emit("Where", [keep, g, ctx.const(0.0, like=x)])
    return [dx] + [None] * (len(ctx.node.input) - 1)


@backward("Neg")
def neg(ctx, grads):
    """Y = -X:  dX = -dY."""
    return [ctx.emit("Neg", [grads[0]])]


@backward("Abs")
def abs_(ctx, grads):
    """Y = |X|:  dX = dY * sign(X)."""
    return [ctx.emit("Mul", [grads[0], ctx.emit("Sign", [ctx.node.input[0]])])]


@backward("Sqrt")
def sqrt(ctx, grads):
    """Y = sqrt(X):  dX = dY / (2 Y)."""
    y = ctx.node.output[0]
    return [ctx.emit("Div", [grads[0], ctx.emit("Add", [y, y])])]


@backward("Exp")
def exp(ctx, grads):
    """Y = exp(X):  dX = dY * Y."""
    return [ctx.emit("Mul", [grads[0], ctx.node.output[0]])]


@backward("Log")
def log(ctx, grads):
    """Y = log(X):  dX = dY / X."""
    return [ctx.emit("Div", [grads[0], ctx.node.input[0]])]


@backward("Reciprocal")
def reciprocal(ctx, grads):
    """Y = 1 / X:  dX = -dY * Y^2."""
    y = ctx.node.output[0]
    return [ctx.emit("Neg", [ctx.emit("Mul", [grads[0], ctx.emit("Mul", [y, y])])])]


@backward("Sin")
def sin(ctx, grads):
    """Y = sin(X):  dX = dY * cos(X)."""
    return [ctx.emit("Mul", [grads[0], ctx.emit("Cos", [ctx.node.input[0]])])]


@backward("Cos")
def cos(ctx, grads):
    """Y = cos(X):  dX = -dY * sin(X)."""
    local = ctx.emit("Neg", [ctx.emit("Sin", [ctx.node.input[0]])])
    return [ctx.emit("Mul", [grads[0], local])]
