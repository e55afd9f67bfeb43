"""Element-wise activations and other unary maps, one rule per op: ``y = f(x)`` element by
element, with E and Var integrated over the input's source (:mod:`.elementwise`).

Each op's function is declared next to its formula by a decorated factory
``name(ctx, rank) -> ElementwiseFn`` (``rank`` lays out per-channel constants such as PRelu's
slope); ``@elementwise_rule`` also registers the op's moment rule under the factory's name.
Closed forms on a Gaussian input (:mod:`.gaussian`): Relu, LeakyRelu, PRelu, Abs, and the
piecewise polynomials HardSigmoid, HardSwish, Clip, ThresholdedRelu, Shrink; Neg and the
float Cast/Identity are exact affine maps. Smooth functions are integrated by Gauss-Hermite,
the others (kinks, jumps) by the composite rule (:data:`.elementwise_fn.SMOOTH`). Dropout's
rule is in :mod:`.dropout`, the rounding maps (Sign, Floor, Ceil, Round) in :mod:`.rounding`.
"""

from __future__ import annotations

import numpy as np
from .. import special

from ..dtypes import FLOAT_TYPES
from ..moments import Moments
from .context import RuleContext, RuleError
from .elementwise import (
    ElementwiseFn,
    apply_elementwise,
    apply_fn,
    constant_input,
    digest,
    elementwise_function,
    elementwise_rule,
    rank_of,
    refined,
)
from .gaussian import abs_closed, leaky_closed
from .gamma_law import gamma_sqrt_moments
from .piecewise_fns import clip_fn, piecewise_fn
from .support import nonnegative
from .registry import rule

_FLOAT_MAX = 3.4028234663852886e38


def identity_fn() -> ElementwiseFn:
    return ElementwiseFn(("Identity",), lambda x: x, affine=(1.0, 0.0))


# functions whose moment rule is elsewhere (shape.py: Identity, Cast) ---------------------------


@elementwise_function("Identity")
def identity_function(ctx: RuleContext, rank):
    """y = x."""
    return identity_fn()


@elementwise_function("Cast")
def cast_function(ctx: RuleContext, rank):
    """y = x for a cast to a float type; not element-wise otherwise."""
    return identity_fn() if ctx.attr("to") in FLOAT_TYPES else None


# rectifiers: closed forms on a Gaussian ------------------------------------------------------


@elementwise_rule("Relu")
def relu(ctx: RuleContext, rank):
    """y = max(x, 0); on x ~ N(mu, s^2): E = mu Phi(mu/s) + s phi(mu/s),
    E[y^2] = (mu^2 + s^2) Phi(mu/s) + mu s phi(mu/s)."""
    return ElementwiseFn(("Relu",), lambda x: np.maximum(x, 0.0),
                         closed=lambda m, v: leaky_closed(m, v, 0.0))


@elementwise_rule("LeakyRelu")
def leaky_relu(ctx: RuleContext, rank):
    """y = x (x >= 0), alpha x (x < 0), alpha default 0.01; on a Gaussian:
    E = E[x+] - alpha E[(-x)+], E[y^2] = E[x+^2] + alpha^2 E[(-x)+^2]."""
    alpha = float(ctx.attr("alpha", 0.01))
    return ElementwiseFn(("LeakyRelu", alpha), lambda x: np.where(x >= 0, x, alpha * x),
                         closed=lambda m, v: leaky_closed(m, v, alpha))


@elementwise_rule("PRelu")
def prelu(ctx: RuleContext, rank):
    """y = x (x >= 0), slope x (x < 0) with a constant (per-channel) slope; closed form as
    LeakyRelu."""
    slope = constant_input(ctx, 1, rank)
    return ElementwiseFn(("PRelu", *digest(slope)), lambda x: np.where(x >= 0, x, slope * x),
                         closed=lambda m, v: leaky_closed(m, v, slope))


@elementwise_rule("Abs")
def absolute(ctx: RuleContext, rank):
    """y = |x|; on a Gaussian: E = E[x+] + E[(-x)+], E[y^2] = mu^2 + nu."""
    return ElementwiseFn(("Abs",), np.abs, closed=abs_closed)


@elementwise_rule("Neg")
def neg(ctx: RuleContext, rank):
    """y = -x: E = -mu, Var = nu (exact)."""
    return ElementwiseFn(("Neg",), np.negative, affine=(-1.0, 0.0))


# exponential-linear units ----------------------------------------------------------------------


def _elu(alpha: float):
    return lambda x: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0)))


@elementwise_rule("Elu")
def elu(ctx: RuleContext, rank):
    """y = x (x > 0), alpha (exp(x) - 1) (x <= 0), alpha default 1 (smooth when alpha = 1)."""
    alpha = float(ctx.attr("alpha", 1.0))
    return ElementwiseFn(("Elu1" if alpha == 1.0 else "Elu", alpha), _elu(alpha))


@elementwise_rule("Selu")
def selu(ctx: RuleContext, rank):
    """y = gamma * Elu_alpha(x), alpha = 1.6732632, gamma = 1.0507010 by default."""
    alpha = float(ctx.attr("alpha", 1.67326319217681884765625))
    gamma = float(ctx.attr("gamma", 1.05070102214813232421875))
    elu_alpha = _elu(alpha)
    return ElementwiseFn(("Selu", alpha, gamma), lambda x: gamma * elu_alpha(x))


@elementwise_rule("Celu")
def celu(ctx: RuleContext, rank):
    """y = max(0, x) + min(0, alpha (exp(x / alpha) - 1)) (C1 for every alpha)."""
    alpha = float(ctx.attr("alpha", 1.0))
    return ElementwiseFn(
        ("Celu1", alpha),
        lambda x: np.maximum(x, 0.0) + np.minimum(0.0, alpha * np.expm1(np.minimum(x, 0) / alpha)),
    )


# sigmoid family ---------------------------------------------------------------------------------


def _softplus(x):
    return np.logaddexp(0.0, x)


def _sigmoid(x):
    """1 / (1 + exp(-x)), scipy's ``expit`` formula, with numpy's vectorised exp: the same
    values to an ulp, at a third of the time (the smooth chains' quadrature evaluates SiLU's
    sigmoid at 96 nodes for each of 1e5-1e6 cells per layer). In place on one temporary (the
    same operations: ``1 / t`` as ``divide(1.0, t)``, whose vectorised loop takes half the
    time of ``reciprocal``'s; both are IEEE division, correctly rounded, so equal bit for
    bit)."""
    t = np.negative(x)
    if not isinstance(t, np.ndarray) or t.dtype.kind != "f":  # a scalar, an integer array
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(t))
    with np.errstate(over="ignore"):
        np.exp(t, out=t)
    t += 1.0
    return np.divide(1.0, t, out=t)


@elementwise_rule("Sigmoid")
def sigmoid(ctx: RuleContext, rank):
    """y = 1 / (1 + exp(-x))."""
    return ElementwiseFn(("Sigmoid",), _sigmoid)


@elementwise_rule("HardSigmoid")
def hard_sigmoid(ctx: RuleContext, rank):
    """y = clip(alpha x + beta, 0, 1), alpha 0.2, beta 0.5 by default."""
    alpha, beta = float(ctx.attr("alpha", 0.2)), float(ctx.attr("beta", 0.5))
    if alpha > 0:  # 0 below -beta/alpha, alpha x + beta up to (1 - beta)/alpha, 1 above
        lo, hi = -beta / alpha, (1.0 - beta) / alpha
        pieces = [(-np.inf, lo, (0.0, 0.0, 0.0)), (lo, hi, (beta, alpha, 0.0)),
                  (hi, np.inf, (1.0, 0.0, 0.0))]
    else:
        pieces = None
    return piecewise_fn(("HardSigmoid", alpha, beta),
                      lambda x: np.clip(alpha * x + beta, 0.0, 1.0), pieces)


@elementwise_rule("Tanh")
def tanh(ctx: RuleContext, rank):
    """y = tanh(x)."""
    return ElementwiseFn(("Tanh",), np.tanh)


@elementwise_rule("Softplus")
def softplus(ctx: RuleContext, rank):
    """y = log(1 + exp(x))."""
    return ElementwiseFn(("Softplus",), _softplus)


@elementwise_rule("Softsign")
def softsign(ctx: RuleContext, rank):
    """y = x / (1 + |x|)."""
    return ElementwiseFn(("Softsign",), lambda x: x / (1.0 + np.abs(x)))


# gated units ------------------------------------------------------------------------------------


@elementwise_rule("Gelu")
def gelu(ctx: RuleContext, rank):
    """y = x Phi(x) = 0.5 x (1 + erf(x / sqrt(2))); with approximate='tanh'
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    approximate = ctx.attr("approximate", "none")
    if approximate == "tanh":
        return ElementwiseFn(("Gelu", approximate), lambda x: 0.5 * x * (
            1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3))))
    return ElementwiseFn(("Gelu", approximate),
                         lambda x: 0.5 * x * (1.0 + special.erf(x / np.sqrt(2.0))))


@elementwise_rule("Swish")
def swish(ctx: RuleContext, rank):
    """y = x sigmoid(alpha x), alpha default 1."""
    alpha = float(ctx.attr("alpha", 1.0))
    return ElementwiseFn(("Swish", alpha), lambda x: x * _sigmoid(alpha * x))


@elementwise_rule("HardSwish")
def hard_swish(ctx: RuleContext, rank):
    """y = x clip(x / 6 + 1/2, 0, 1): 0 below -3, x/2 + x^2/6 up to 3, x above (closed form
    on a Gaussian)."""
    return piecewise_fn(("HardSwish",), lambda x: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0),
                      _HARD_SWISH)


_HARD_SWISH = [(-np.inf, -3.0, (0.0, 0.0, 0.0)), (-3.0, 3.0, (0.0, 0.5, 1.0 / 6.0)),
               (3.0, np.inf, (0.0, 1.0, 0.0))]


@elementwise_rule("Mish")
def mish(ctx: RuleContext, rank):
    """y = x tanh(softplus(x))."""
    return ElementwiseFn(("Mish",), lambda x: x * np.tanh(_softplus(x)))


# thresholds and clipping ------------------------------------------------------------------------


@elementwise_rule("ThresholdedRelu")
def thresholded_relu(ctx: RuleContext, rank):
    """y = x (x > alpha), 0 otherwise, alpha default 1."""
    alpha = float(ctx.attr("alpha", 1.0))
    pieces = [(-np.inf, alpha, (0.0, 0.0, 0.0)), (alpha, np.inf, (0.0, 1.0, 0.0))]
    return piecewise_fn(("ThresholdedRelu", alpha), lambda x: np.where(x > alpha, x, 0.0), pieces)


@elementwise_rule("Shrink")
def shrink(ctx: RuleContext, rank):
    """y = x + bias (x < -lambd), x - bias (x > lambd), 0 otherwise; bias 0, lambd 0.5."""
    bias, lambd = float(ctx.attr("bias", 0.0)), float(ctx.attr("lambd", 0.5))
    pieces = None
    if lambd >= 0:
        pieces = [(-np.inf, -lambd, (bias, 1.0, 0.0)), (-lambd, lambd, (0.0, 0.0, 0.0)),
                  (lambd, np.inf, (-bias, 1.0, 0.0))]
    return piecewise_fn(
        ("Shrink", bias, lambd),
        lambda x: np.where(x < -lambd, x + bias, np.where(x > lambd, x - bias, 0.0)), pieces)


@elementwise_function("Clip")
def clip_function(ctx: RuleContext, rank):
    """y = min(max(x, lo), hi), bounds from attributes (opset < 11) or constant inputs."""
    if ctx.opset < 11:
        lo = np.float64(float(ctx.attr("min", -_FLOAT_MAX)))
        hi = np.float64(float(ctx.attr("max", _FLOAT_MAX)))
    else:
        lo = constant_input(ctx, 1, rank) if ctx.has_input(1) else np.float64(-np.inf)
        hi = constant_input(ctx, 2, rank) if ctx.has_input(2) else np.float64(np.inf)
    return clip_fn(lo, hi)


@elementwise_function("Max", "Min")
def extreme_function(ctx: RuleContext, rank):
    """y = max(x, c) (min) of one signal and constants c, at any input index: Clip(x, c, inf)
    (Clip(x, -inf, c)). Declared so a Max or Min by a constant is walked through like any
    element-wise node: ``x - max(x, -1e38)`` (RWKV's running maximum, started at -1e38) is 0,
    not the difference of independent terms."""
    constants = [constant_input(ctx, i, rank) for i, name in enumerate(ctx.node.input)
                 if name and not ctx.graph.is_signal(name)]
    if not constants:
        return None
    pick = np.minimum if ctx.node.op_type == "Min" else np.maximum
    c = constants[0]
    for other in constants[1:]:
        c = pick(c, other)
    inf = np.float64(np.inf)
    return clip_fn(-inf, c) if ctx.node.op_type == "Min" else clip_fn(c, inf)


@rule("Clip")
def clip(inputs, ctx: RuleContext):
    """y = min(max(x, lo), hi) over x's law (apply_elementwise), bounds from attributes
    (opset < 11) or constant inputs; a bound computed from the signal but predicted without
    spread (T5 in float16 clamps to finfo.max, or 1000 below it once an inf appeared) is taken
    at its predicted value."""
    try:
        return apply_elementwise(inputs, ctx)
    except RuleError:
        if inputs[0] is None or ctx.opset < 11 or all(b is None for b in inputs[1:3]):
            raise
    bounds = []
    for index, default in ((1, -np.inf), (2, np.inf)):
        b = inputs[index] if index < len(inputs) else None
        if b is not None:
            if np.size(b.mean) != 1 or np.any(np.asarray(b.var) != 0):
                raise RuleError(f"bound {index} varies with the signal")
            bounds.append(np.float64(np.ravel(b.mean)[0]))
        else:
            bounds.append(constant_input(ctx, index, None) if ctx.has_input(index)
                          else np.float64(default))
    y = apply_fn(inputs[0], clip_fn(*bounds), rank_of(ctx))
    return [refined(y, ctx)] + [None] * (len(ctx.node.output) - 1)


# transcendental functions (rounding: rounding.py) ------------------------------------------------


@elementwise_rule("Exp")
def exp(ctx: RuleContext, rank):
    """y = exp(x)."""
    return ElementwiseFn(("Exp",), np.exp)


@elementwise_rule("Log")
def log(ctx: RuleContext, rank):
    """y = log(x); refused unless x > 0 with probability 1 - 1e-6."""
    return ElementwiseFn(("Log",), np.log, domain="positive")


@elementwise_function("Sqrt")
def sqrt_function(ctx: RuleContext, rank):
    """y = sqrt(x); refused unless x >= 0 with probability 1 - 1e-6."""
    return ElementwiseFn(("Sqrt",), np.sqrt, domain="nonnegative")


@rule("Sqrt")
def sqrt(inputs, ctx: RuleContext):
    """y = sqrt(x) over x's law (apply_elementwise); refused unless x >= 0 with probability
    1 - 1e-6, except for an x that is nonnegative by construction (a mean of squares plus an
    epsilon, :func:`.support.nonnegative`) whose Gaussian law of mean mu and variance nu crosses 0: then
    x ~ Gamma(k = mu^2 / nu, theta = nu / mu) of that mean and variance (a mean of 2k squared
    zero-mean Gaussians has this law), and E = sqrt(theta) Gamma(k + 1/2) / Gamma(k),
    Var = mu - E^2 (elements of variance 0, a class token's constant row: sqrt(mu), 0; of
    shape k over 1e6, where the Gamma ratio loses its digits (a round-off variance, 1e-40 on
    a constant row), the delta method: E = sqrt(mu) (1 - 1/(8k)), Var = nu / (4 mu))."""
    try:
        return apply_elementwise(inputs, ctx)
    except RuleError:
        x = inputs[0]
        if x is None or x.source is not None or not nonnegative(ctx.graph, ctx.node.input[0]):
            raise
    mu, nu = np.broadcast_arrays(np.asarray(x.mean, np.float64), np.asarray(x.var, np.float64))
    if not (np.all(mu > 0) and np.all(nu >= 0) and np.any(nu > 0)):
        raise RuleError("the input's mean is not positive")
    return [Moments(*gamma_sqrt_moments(mu, nu))]


@elementwise_rule("Reciprocal")
def reciprocal(ctx: RuleContext, rank):
    """y = 1 / x, integrated over |x| >= |median| / 10; refused when x comes closer to 0 with
    probability over 1e-6."""
    return ElementwiseFn(("Reciprocal",), lambda x: 1.0 / x, domain="nonzero")


@elementwise_rule("Erf")
def erf(ctx: RuleContext, rank):
    """y = erf(x)."""
    return ElementwiseFn(("Erf",), special.erf)


@elementwise_rule("Sin")
def sin(ctx: RuleContext, rank):
    """y = sin(x)."""
    return ElementwiseFn(("Sin",), np.sin)


@elementwise_rule("Cos")
def cos(ctx: RuleContext, rank):
    """y = cos(x)."""
    return ElementwiseFn(("Cos",), np.cos)


@elementwise_rule("Atan")
def atan(ctx: RuleContext, rank):
    """y = arctan(x)."""
    return ElementwiseFn(("Atan",), np.arctan)


@elementwise_rule("Sinh")
def sinh(ctx: RuleContext, rank):
    """y = sinh(x)."""
    return ElementwiseFn(("Sinh",), np.sinh)


@elementwise_rule("Cosh")
def cosh(ctx: RuleContext, rank):
    """y = cosh(x)."""
    return ElementwiseFn(("Cosh",), np.cosh)


@elementwise_rule("Asinh")
def asinh(ctx: RuleContext, rank):
    """y = arcsinh(x)."""
    return ElementwiseFn(("Asinh",), np.arcsinh)
