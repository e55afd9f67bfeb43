"""Backward rules of the arithmetic ops: Add, Sub, Mul, Div, Pow, Sum, Mean.

- One constant operand c: the element-wise rule of :mod:`.activations` for the signal
  (``dx = dy * d op(x, c)/dx``; for Add and Sub exactly ``+-dy``, an attention mask's
  ``finfo.min`` would defeat the numerical derivative); a constant that is a parameter (a bias, a scale) gets
  ``dc = sum over the broadcast axes of dy * d op/dc``.
- Two signal operands that are element-wise functions of one tensor T (GELU as
  ``x * 0.5 * (1 + erf(x / sqrt 2))``, SiLU as ``x * sigmoid(x)``): the node is ``h(T)``;
  the gradient goes to T directly, ``dT = dy h'(T)``, since the two paths carry the same dy
  and do not add as independent.
- Otherwise, operands independent: Add/Sub/Sum pass dy (negated for Sub's second operand),
  ``Mean`` divides by the operand count, Mul gives ``da = dy b`` with
  ``E[da^2] = E[dy^2] E[b^2]``, Div ``da = dy / b`` and ``db = -dy a / b^2`` alike.
- A Div whose operands the forward drew jointly (a ratio of two sums that share their
  weights): the factors' moments over those draws (:mod:`.joint_ratio`).

An operand broadcast against the output receives the sum of dy over the broadcast axes:
independent over samples and features (variances add), over the positions of a sample
through ``sample_var`` (``Var[sum_s dy] = S^2 u``), over tokens through the token field
(``Var[sum_t dy] = sum_{s,t} Sigma[s, t]``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..moments import Moments
from ..rules.gamma_law import gamma_moment
from ..rules.context import RuleError
from ..rules.elementwise import base_source, is_smooth, node_function, rank_of
from ..rules.fusion import common_ancestor, fused_function
from ..rules.gaussian import compose, expand, gaussian_moments
from ..rules.support import nonnegative
from ..rules.unit_rows import is_unit_rows
from .activations import (derivative, positions_of, reads_given, through_function,
                          times_independent)
from .context import GradContext
from .id_gates import gated_by_masked_keys
from .conditional import operand, shifted
from .gradient import Gradient
from .joint_ratio import joint_ratio_factors
from .registry import rule
from .tokens import axes_of, coherent_gain


def reduce_to(g: Gradient, out_shape, operand_shape) -> Gradient:
    """dy summed over the axes along which the operand was broadcast (module docstring)."""
    rank = len(out_shape)
    operand = (1,) * (rank - len(operand_shape)) + tuple(operand_shape)
    if tuple(operand) == tuple(out_shape):
        return g
    g = g.expand_rank(rank)
    summed = [i for i in range(rank) if operand[i] == 1 and out_shape[i] > 1]
    if g.rank < rank:
        g = Gradient(np.reshape(g.mean, (1,) * rank), np.reshape(g.var, (1,) * rank),
                     None if g.sample_var is None else np.reshape(g.sample_var, (1,) * rank),
                     tokens=g.tokens)
    spatial = [i for i in summed if i >= 2] if rank > 2 else []
    count = int(np.prod([out_shape[i] for i in summed]))
    mean, var = np.broadcast_arrays(g.mean, g.var)
    mean = mean.mean(axis=tuple(summed), keepdims=True) if summed else mean
    var = var.mean(axis=tuple(summed), keepdims=True) if summed else var
    if spatial and len(spatial) == rank - 2:
        s = int(np.prod(out_shape[2:]))
        u = g.sample_var if g.sample_var is not None else g.var / s
        u = np.broadcast_to(u, np.broadcast_shapes(np.shape(u), (1,) * rank))
        u = u.mean(axis=tuple(summed), keepdims=True)
        var = np.minimum(var, u * s) * s  # per sample and channel: S^2 u = S (S u)
        var = var * (count // s)
    else:
        var = var * count
    axes = axes_of(g.tokens, rank) or []
    if axes and set(axes) <= set(summed):  # summed over the tokens: coherently
        var = var * coherent_gain(g.tokens)
    tokens = g.tokens if axes and not set(axes) & set(summed) else None
    return Gradient(mean * count, var, tokens=tokens)


def _constant_gradient(g: Gradient, ctx: GradContext, which: int) -> Gradient | None:
    """The gradient of the constant operand ``1 - which`` when it is a parameter."""
    other = 1 - which
    if not ctx.is_parameter(other):
        return None
    op = ctx.node.op_type
    out_shape = ctx.out_shape()
    shape = ctx.in_shape(other)
    if op in ("Add", "Sub"):
        part = g if op == "Add" or other == 0 else g.scaled(-1.0)
    elif op == "Mul":
        x = ctx.x(which)
        part = times_independent(g, x.mean, x.var + x.mean**2, positions_of(ctx))
    else:
        return None  # Div/Pow by a parameter: rare; no gradient predicted
    return reduce_to(part, out_shape, shape).pooled()


def _fused(grads, ctx: GradContext):
    found = common_ancestor(ctx)
    if found is None:
        return None
    tensor, chain_a, chain_b = found
    if tensor not in ctx.forward:
        return None
    h = fused_function(ctx.node.op_type, chain_a, chain_b)
    rank = rank_of(ctx)
    x: Moments = ctx.forward[tensor]
    src = base_source(x, rank)
    inner = compose(src.chain)
    dh = derivative(h.fn)
    p1, var = gaussian_moments(lambda z: dh(inner(z)), src.mean, src.var,
                               smooth=is_smooth(src.chain), rank=rank)
    ctx.redirect[tensor] = times_independent(grads[0], p1, var + p1**2, positions_of(ctx))
    return [None] * len(ctx.node.input)


def conditioned(g: Gradient, ctx: GradContext, which: int) -> Gradient:
    """dy for operand ``which`` of ``a + b``, with dy's conditional on a passed to the operand
    (``r_s(x) = E_o[r_a(x + o)]``, the other operand o independent: :mod:`.conditional`)."""
    if g.given is None:
        return g
    rank = rank_of(ctx)
    s, o = ctx.x(which), ctx.x(1 - which)
    if rank is None or rank != g.given.rank or not reads_given(ctx, which):
        return replace(g, given=None)
    return replace(g, given=operand(g.given, expand(s.mean, rank), expand(s.var, rank),
                                    expand(o.mean, rank), expand(o.var, rank)))


def _operand_centred(g: Gradient, ctx: GradContext, which: int) -> Gradient:
    """dy for operand ``which`` of ``a + b``: the x_hat deficit of dy's batch-centred part
    (:class:`.batch_share.Centred`) scaled by ``Var operand / Var(a + b)``."""
    if g.centred is None:
        return g
    total = ctx.x(0).total()[1] + ctx.x(1).total()[1]
    rho2 = ctx.x(which).total()[1] / total if total > 0 else 1.0
    return replace(g, centred=g.centred.operand(rho2))


def _shifted(g: Gradient, ctx: GradContext, which: int) -> Gradient:
    """dx for ``y = x + c`` (c a scalar constant): dy with its conditional moved by c."""
    if g.given is None or ctx.node.op_type != "Add":
        return replace(g, given=None)
    c = ctx.const(1 - which)
    if c is None or np.size(c) != 1:
        return replace(g, given=None)
    return replace(g, given=shifted(g.given, float(np.reshape(c, ()))))


def _inverse_moments(b: Moments, power: int, rank, positive: bool = False
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(E[b^-power], E[b^-2 power]) over b's forward distribution. A ``positive`` b (a norm,
    the square root of a mean of squares: :func:`~onnxinit.rules.support.nonnegative`) is taken
    as the gamma of its mean m and variance v, ``k = m^2 / v``, ``theta = v / m``:
    ``E[b^-p] = theta^-p Gamma(k - p) / Gamma(k)`` (finite for k > 2 power). Its Gaussian law
    reaches below 0, where a clipped denominator (``F.normalize``'s ``max(||x||, eps)``) makes
    ``b^-4`` of order ``eps^-4``."""
    if positive:
        mu = np.asarray(b.mean, np.float64)
        nu = np.asarray(b.var, np.float64)
        if np.all(mu > 0) and np.all(nu >= 0):
            k = np.where(nu > 0, mu * mu / np.where(nu > 0, nu, 1.0), np.inf)
            if np.all(k > 2 * power):
                return _gamma_inverse(mu, nu, k, power), _gamma_inverse(mu, nu, k, 2 * power)
    src = base_source(b, rank)
    inner = compose(src.chain)
    mean, var = gaussian_moments(lambda z: inner(z) ** (-power), src.mean, src.var,
                                 smooth=is_smooth(src.chain), rank=rank)
    return mean, var + mean**2


def _denominator_square(ctx: GradContext, a2, b: Moments, q2, inv2):
    """E[(a / b^2)^2], the second moment of d(a / b)/db. In general ``E[a^2] E[b^-4]``
    (independent operands). ``b`` the norm of ``a``'s own rows (``F.normalize``,
    :func:`~onnxinit.rules.unit_rows.is_unit_rows`): ``a / b^2 = u / b`` with ``u`` an element
    of a unit row, bounded and independent of the row's scale, so
    ``E[u^2] E[b^-2] = (E[a^2] / E[b^2]) E[b^-2]``; the independent form counts the
    row's energy twice, ``E[b^2] E[b^-4] / E[b^-2] = k (k + 1) / ((k - 3)(k - 4))`` times too
    much for a gamma norm of shape k (1.9x at k = 14)."""
    if not is_unit_rows(ctx):
        return a2 * q2
    b2 = np.asarray(b.var + b.mean**2, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b2 > 0, a2 / np.where(b2 > 0, b2, 1.0), 0.0) * inv2


def _off_padding(a: Moments, b: Moments, factors: list) -> list:
    """The Div's gradient factors with the padding left out: elements where ``a`` is exactly 0
    and ``b`` a constant (a zero vector normalised, ``0 / max(||0||, eps)``: the padded tokens
    of a shifted window) get factor 0, the others ``1 / share`` of the elements that carry
    signal. The incoming gradient is 0 there (the padding is sliced away after the block),
    but is described by one second moment for all elements; ``b^-2 = eps^-2`` times it would
    send ``1e24`` times the gradient back. Unchanged where no element is padding."""
    rank = max(np.ndim(a.mean), np.ndim(a.var), np.ndim(b.mean), np.ndim(b.var),
               *(np.ndim(f) for f in factors))
    a_mean, a_var, b_var = (expand(np.asarray(x, np.float64), rank)
                            for x in (a.mean, a.var, b.var))
    padding = (a_mean == 0) & (a_var == 0) & (b_var == 0)
    if not padding.any() or padding.all():
        return factors
    padding = np.broadcast_to(padding, np.broadcast_shapes(
        padding.shape, *(np.shape(expand(np.asarray(f), rank)) for f in factors)))
    share = 1.0 - padding.mean()
    return [np.where(padding, 0.0, expand(np.asarray(f, np.float64), rank)) / share
            for f in factors]


def _gamma_inverse(mu, nu, k, p: int) -> np.ndarray:
    """E[b^-p] for b ~ Gamma(k, nu / mu) (mu^-p where b is constant, k infinite)."""
    finite = np.isfinite(k)
    k_safe = np.where(finite, k, 2.0 * p + 1.0)
    theta = np.where(finite, nu / mu, 1.0)
    return np.where(finite, gamma_moment(k_safe, theta, -p), mu ** (-p))


@rule("Add", "Sub", "Mul", "Div", "Pow")
def binary(grads, ctx: GradContext):
    """See the module docstring."""
    g = grads[0]
    signals = [i for i in (0, 1) if ctx.is_signal(i)]
    out_shape = ctx.out_shape()
    if len(signals) == 1:
        which = signals[0]
        out = [None, None]
        if ctx.node.op_type in ("Add", "Sub"):  # d(x +- c)/dx = +-1 exactly (mask constants of
            # finfo.min defeat a numerical derivative: x + h + c == c; a constant of any size:
            # Swin V2's position bias [1, heads, N, N])
            part = g.scaled(-1.0) if ctx.node.op_type == "Sub" and which == 1 else g
            part = _shifted(part, ctx, which)
        else:
            found = node_function(ctx)
            if found is None or found[0] is None:
                raise RuleError("not element-wise")
            f, which = found
            part = through_function(g, f.fn, ctx.x(which), ctx, which=which)
        out[which] = reduce_to(part, out_shape, ctx.in_shape(which))
        out[1 - which] = _constant_gradient(g, ctx, which)
        return out
    fused = _fused(grads, ctx)
    if fused is not None:
        return fused
    op = ctx.node.op_type
    a_shape, b_shape = ctx.in_shape(0), ctx.in_shape(1)
    s = positions_of(ctx)
    if op == "Add":
        return [reduce_to(_operand_centred(conditioned(g, ctx, 0), ctx, 0), out_shape, a_shape),
                reduce_to(_operand_centred(conditioned(g, ctx, 1), ctx, 1), out_shape, b_shape)]
    if op == "Sub":
        return [reduce_to(g, out_shape, a_shape), reduce_to(g.scaled(-1.0), out_shape, b_shape)]
    a, b = ctx.x(0), ctx.x(1)
    if op == "Mul":
        da = times_independent(g, b.mean, b.var + b.mean**2, s, factor=b)
        db = times_independent(g, a.mean, a.var + a.mean**2, s, factor=a)
        # a mask of the token ids whose zeros the softmax masks anyway: x's gradient is dy
        # (id_gates.py)
        if gated_by_masked_keys(ctx.graph, ctx.forward, ctx.node.input[1], ctx.node.output[0]):
            da = g
        elif gated_by_masked_keys(ctx.graph, ctx.forward, ctx.node.input[0], ctx.node.output[0]):
            db = g
        return [reduce_to(da, out_shape, a_shape), reduce_to(db, out_shape, b_shape)]
    if op == "Div":
        rank = rank_of(ctx)
        factors = joint_ratio_factors(ctx)  # operands drawn jointly by the forward
        if factors is None:
            positive = nonnegative(ctx.graph, ctx.node.input[1])
            inv1, inv2 = _inverse_moments(b, 1, rank, positive)
            q1, q2 = _inverse_moments(b, 2, rank, positive)
            a2 = a.var + a.mean**2
            factors = _off_padding(a, b, [inv1, inv2, -a.mean * q1, _denominator_square(
                ctx, a2, b, q2, inv2)])
        da = times_independent(g, *factors[:2], s)
        db = times_independent(g, *factors[2:], s)
        return [reduce_to(da, out_shape, a_shape), reduce_to(db, out_shape, b_shape)]
    raise RuleError(f"{op} of two independent signals")


@rule("Sum", "Mean")
def sum_(grads, ctx: GradContext):
    """Sum: every operand receives dy; Mean: dy / n (broadcast operands: summed)."""
    g = grads[0]
    n = len(ctx.node.input)
    part = g if ctx.node.op_type == "Sum" else g.scaled(1.0 / n)
    return [reduce_to(part, ctx.out_shape(), ctx.in_shape(i)) if ctx.is_signal(i) else None
            for i in range(n)]
