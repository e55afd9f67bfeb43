"""Arithmetic between tensors: Add, Sub, Mul, Div, Sum, Mean, Max, Min, Where, Concat (and Pow,
delegated to the element-wise machinery of elementwise.py).

Operands are signals (Moments) or constants (their exact values). A constant ``c`` is treated as
a signal of mean ``c`` and variance 0, element by element, so the independence formulas below
are exact for it::

    Add/Sub   E = mu1 +/- mu2,   Var = nu1 + nu2
    Mul       E = mu1 mu2,       Var = (nu1 + mu1^2)(nu2 + mu2^2) - mu1^2 mu2^2
    Div by c  = Mul by 1/c

Statistics are computed on the broadcast grid of every operand's tracked axes (a per-channel
signal plus a ``[S, D]`` positional constant gives a ``[1, S, D]`` grid), kept whole when it is
small (at most 65536 cells), else folded back onto the signal's tracked axes (or, for a scalar
signal, the last axis the constant varies along) by the law of total variance, which is exact
for the per-index statistics over the folded axes:

    E_k = mean_f E_kf,   Var_k = mean_f Var_kf + var_f E_kf

e.g. for a positional-embedding Add of ``c[S, D]``: ``Var_d = nu_d + var_s c[s, d]``. Two signals
that are element-wise functions of one common ancestor (``x * Sigmoid(x)``) are fused first
(``fusion.fused_elementwise``); otherwise the two signals are taken as independent.

Attention masks (masks.py): a constant holding -inf is allowed in Add, Sub and Where (the
elements it reaches are masked: mean -inf, variance 0), and a grid that reaches a Softmax keeps
one value per element up to ``masks.OFFSET_CAP`` cells (a ``finfo.min`` or -100 offset is a
position the Softmax ignores, not variance to fold).
"""

from __future__ import annotations

import numpy as np
from scipy import special

from . import masks
from ..moments import Elementwise, Moments, compressed
from .context import RuleContext, RuleError, signal
from .elementwise import apply_elementwise, apply_fn, digest
from .fusion import fused_elementwise
from .gaussian import compose
from .registry import rule

_GRID_CAP = 1 << 22  # elements of a statistics grid before it is folded further
_CONST_CAP = 1 << 16  # constants larger than this are not handed to the element-wise rules
_KEEP_CAP = 1 << 16  # grids up to this many cells are kept whole (never folded)


# ---------------------------------------------------------------------------------------------
# grids of statistics


def _out_rank(ctx: RuleContext) -> int:
    shape = ctx.graph.shape(ctx.node.output[0])
    if shape is not None:
        return len(shape)
    ranks = [len(s) for s in (ctx.graph.shape(n) for n in ctx.node.input if n) if s is not None]
    if not ranks:
        raise RuleError("no static shape to align the operands")
    return max(ranks)


def _lift(a: np.ndarray, rank: int) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 0 or a.ndim >= rank:
        return a
    return a.reshape((1,) * (rank - a.ndim) + a.shape)


def _operand(inputs, ctx: RuleContext, i: int, rank: int, masked: bool = False
             ) -> tuple[np.ndarray, np.ndarray, bool]:
    """(mean, var, is_signal) of input ``i`` laid out at ``rank``; constants have variance 0
    (and may hold -inf, a mask, when ``masked``)."""
    m = inputs[i] if i < len(inputs) else None
    if m is not None:
        return _lift(m.mean, rank), _lift(m.var, rank), True
    c = ctx.const(i)
    if c is None:
        raise RuleError(f"input {i} is neither a signal nor constant")
    c = np.asarray(c, dtype=np.float64)
    if not np.all(np.isfinite(c) | (masked & np.isneginf(c))):
        raise RuleError(f"constant input {i} is not finite")
    c = _lift(c, rank)
    return c, np.zeros_like(c), False


def _axes(*arrays: np.ndarray) -> set[int]:
    shape = np.broadcast_shapes(*(np.shape(a) for a in arrays))
    return {i for i, n in enumerate(shape) if n > 1}


def fold(mean: np.ndarray, var: np.ndarray, keep) -> Moments:
    """Moments tracked along ``keep`` only: E_k = mean_f E, Var_k = mean_f Var + var_f E over
    the other axes (uniform weights: each grid cell stands for the same number of elements)."""
    mean, var = np.broadcast_arrays(np.asarray(mean, np.float64), np.asarray(var, np.float64))
    other = tuple(i for i in range(mean.ndim) if i not in set(keep) and mean.shape[i] > 1)
    if not other:
        return Moments(mean.copy(), var.copy())
    m = mean.mean(axis=other, keepdims=True)
    v = var.mean(axis=other, keepdims=True) + ((mean - m) ** 2).mean(axis=other, keepdims=True)
    return Moments(m, v)


def _finish(mean, var, signal_axes: set[int], keep: int = _KEEP_CAP) -> Moments:
    """Keep the whole grid when it is small (<= ``keep`` cells: a positional embedding's
    per-position means stay per position, so that a later mean over the sequence averages them
    instead of counting them as noise), or when it varies only along the signal's tracked axes;
    else fold a constant's variation along other axes, keeping its last varying axis for a
    scalar signal."""
    axes = _axes(mean, var)
    size = int(np.prod(np.broadcast_shapes(np.shape(mean), np.shape(var))))
    if size <= keep or ((axes <= signal_axes or len(axes) <= 1) and size <= _GRID_CAP):
        return Moments(mean, var)
    keep = signal_axes if signal_axes else {max(axes)}
    return fold(mean, var, keep)


def _same_layout(inputs, ctx: RuleContext, rank: int) -> bool:
    """True when the single signal's element-wise rule can take this node without losing
    anything: every constant is small and varies only along axes the signal tracks (or the
    signal is scalar and the constants vary along one axis)."""
    which = [i for i, m in enumerate(inputs) if m is not None]
    if len(which) != 1:
        return False
    x = inputs[which[0]]
    x_axes = _axes(_lift(x.mean, rank), _lift(x.var, rank))
    c_axes: set[int] = set()
    for i, name in enumerate(ctx.node.input):
        if i == which[0] or not name:
            continue
        c = ctx.const(i)
        if c is None or np.size(c) > _CONST_CAP or not np.all(np.isfinite(c)):
            return False
        c_axes |= _axes(_lift(c, rank))
    return c_axes <= x_axes or (not x_axes and len(c_axes) <= 1)


def _binary_independent(op: str, a, b) -> tuple[np.ndarray, np.ndarray]:
    (ma, va), (mb, vb) = a, b
    if op == "Add":
        return ma + mb, va + vb
    if op == "Sub":
        return ma - mb, va + vb
    if op == "Mul":
        return ma * mb, (va + ma**2) * (vb + mb**2) - ma**2 * mb**2
    raise RuleError(f"{op} of these operands")


def _two_signals_fused(inputs, ctx: RuleContext):
    if sum(m is not None for m in inputs) == 2 and len(inputs) == 2:
        return fused_elementwise(inputs, ctx)
    return None


# ---------------------------------------------------------------------------------------------
# Add, Sub, Mul, Div


@rule("Add", "Sub", "Mul", "Div", fusion=True)
def binary(inputs, ctx: RuleContext):
    """y = a (+ - * /) b, numpy broadcasting. Exact with a constant operand c (mean c, var 0):
    Add/Sub E = mu +/- c, Var = nu; Mul E = c mu, Var = c^2 nu; Div by c is Mul by 1/c; a
    constant varying along axes the signal does not track is folded:
    Var_k = mean_f Var_kf + var_f E_kf. Two signals: fused when both are element-wise functions
    of a common ancestor, else independent: Add/Sub E = mu1 +/- mu2, Var = nu1 + nu2; Mul
    E = mu1 mu2, Var = (nu1+mu1^2)(nu2+mu2^2) - mu1^2 mu2^2. Division by a signal (other than
    c / x, element-wise) is measured."""
    op = ctx.node.op_type
    rank = _out_rank(ctx)
    offset = _logit_offset(inputs, ctx, rank)
    if offset is not None:
        return [offset]
    fused = _two_signals_fused(inputs, ctx)
    if fused is not None:
        return fused
    if _same_layout(inputs, ctx, rank):
        try:
            return apply_elementwise(inputs, ctx)
        except RuleError:
            if op == "Div" and inputs[1] is not None:
                raise
    if op == "Div":
        if inputs[1] is not None:
            raise RuleError("division by a signal")
        mb, vb, _ = _operand(inputs, ctx, 1, rank)
        if np.any(mb == 0):
            raise RuleError("division by a constant holding zeros")
        b = (1.0 / mb, vb)
        op = "Mul"
    else:
        b = _operand(inputs, ctx, 1, rank)[:2]
    a = _operand(inputs, ctx, 0, rank)[:2]
    mean, var = _binary_independent(op, a, b)
    keep = masks.OFFSET_CAP if _varies(mean) and masks.feeds_softmax(ctx) else _KEEP_CAP
    out = _finish(mean, var, _signal_axes(inputs, rank), keep)
    if op in ("Add", "Sub") and all(m is not None for m in inputs) and out.mean.shape == np.shape(mean):
        mixture = sum_mixture(inputs[0], inputs[1], rank, op == "Sub")
        if mixture is not None:
            out = Moments(out.mean, out.var, None, mixture)
    return [out]


def _varies(a) -> bool:
    return len(_axes(a)) > 1


def _exact(inputs, ctx: RuleContext, i: int) -> np.ndarray | None:
    """Input ``i``'s value when it is exactly known: a constant, or a signal of variance 0
    (computed from an attention_mask input, masks.derived_moments)."""
    m = inputs[i]
    if m is None:
        return ctx.const(i)
    if np.all(m.var == 0):
        return m.mean
    return None


def _logit_offset(inputs, ctx: RuleContext, rank: int) -> Moments | None:
    """Add/Sub of a signal x and an exactly known c that is a mask (holds -inf) or a grid that
    reaches a Softmax: E = mu +/- c per element, Var = nu (0 where masked), the grid kept up to
    masks.OFFSET_CAP cells (x's own variation folded first onto c's axes when larger). None
    when this is not such a node."""
    if ctx.node.op_type not in ("Add", "Sub") or len(inputs) != 2:
        return None
    known = [_exact(inputs, ctx, i) for i in range(2)]
    if (known[0] is None) == (known[1] is None):
        return None
    i = 0 if known[0] is None else 1
    c = _lift(np.asarray(known[1 - i], dtype=np.float64), rank)
    c = _lift(compressed(c, np.zeros_like(c)).mean, rank)  # a mask expanded over the batch: once
    if ctx.node.op_type == "Sub" and i == 0:
        c = -c
    if not (masks.has_masked(c) or (_varies(c) and masks.feeds_softmax(ctx))):
        return None
    if np.isnan(c).any() or np.isposinf(c).any():
        raise RuleError("a constant offset holds NaN or +inf")
    x = inputs[i]
    mx, vx = _lift(x.mean, rank), _lift(x.var, rank)
    sign = -1.0 if ctx.node.op_type == "Sub" and i == 1 else 1.0
    size = int(np.prod(np.broadcast_shapes(np.shape(mx), np.shape(vx), np.shape(c))))
    if size > masks.OFFSET_CAP:
        folded = fold(mx, vx, _axes(c))
        mx, vx = folded.mean, folded.var
        size = int(np.prod(np.broadcast_shapes(np.shape(mx), np.shape(vx), np.shape(c))))
        if size > masks.OFFSET_CAP:
            raise RuleError("an attention mask too large to keep per element")
    with np.errstate(invalid="ignore"):
        mean = sign * mx + c
    var = np.where(np.isneginf(mean), 0.0, np.broadcast_to(vx, mean.shape))
    return Moments(mean, var)


_RELU_BINS = 2  # equal-probability bins of a ReLU's positive part in a mixture


def _phi(t: np.ndarray) -> np.ndarray:
    """Standard normal density, 0 at +-inf."""
    finite = np.isfinite(t)
    return np.where(finite, np.exp(-0.5 * np.where(finite, t, 0.0) ** 2), 0.0) / np.sqrt(2 * np.pi)


def _components(x: Moments, rank: int):
    """x as Gaussian mixture components (w, m, v), each with a leading component axis: one
    component for a Gaussian (no element-wise chain); for ReLU(z), z ~ N(mu, s^2), the point
    mass at 0 (weight Phi(-mu/s)) and the positive part cut in _RELU_BINS equal-probability bins
    of z, each with its exact conditional mean and variance. None for any other chain."""
    src = x.source
    if src is None or not src.chain:
        return np.ones((1,) + (1,) * rank), _lift(x.mean, rank)[None], _lift(x.var, rank)[None]
    if len(src.chain) != 1 or src.chain[0].key != ("Relu",):
        return None
    mu, var = np.broadcast_arrays(_lift(src.mean, rank), _lift(src.var, rank))
    s = np.sqrt(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        a0 = np.where(s > 0, -mu / np.where(s > 0, s, 1.0), np.where(mu > 0, -np.inf, np.inf))
    p0 = special.ndtr(a0)  # P(z <= 0)
    k = np.arange(1, _RELU_BINS).reshape((-1,) + (1,) * mu.ndim)
    inner = special.ndtri(np.clip(p0 + (1 - p0) * k / _RELU_BINS, 0.0, 1.0))  # standard units
    edges = np.concatenate([a0[None], inner, np.full_like(a0, np.inf)[None]])
    mass = (1 - p0) / _RELU_BINS  # each bin's probability, by construction
    phi = _phi(edges)
    tphi = np.where(phi > 0, np.where(np.isfinite(edges), edges, 0.0) * phi, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        safe = np.where(mass > 0, mass, 1.0)
        # standard normal restricted to [lo, hi]: mean (phi(lo) - phi(hi)) / mass,
        # second moment 1 + (lo phi(lo) - hi phi(hi)) / mass
        cm = np.where(mass > 0, (phi[:-1] - phi[1:]) / safe, 0.0)
        cv = np.where(mass > 0, 1.0 + (tphi[:-1] - tphi[1:]) / safe - cm**2, 0.0)
    lo = edges[:-1]
    w = np.concatenate([p0[None], np.broadcast_to((1 - p0) / _RELU_BINS, lo.shape)])
    m = np.concatenate([np.zeros_like(mu)[None], mu + s * cm])
    v = np.concatenate([np.zeros_like(var)[None], var * np.maximum(cv, 0.0)])
    return w, m, v


def sum_mixture(a: Moments, b: Moments, rank: int, subtract: bool = False):
    """a +/- b (independent) as a Gaussian mixture when each is a Gaussian or a ReLU of one:
    components pair up, w = w_i w_j, m = m_i +/- m_j, v = v_i + v_j. None when neither is a
    ReLU (the sum is Gaussian) or either is another function."""
    ca, cb = _components(a, rank), _components(b, rank)
    if ca is None or cb is None or (ca[0].shape[0] == 1 and cb[0].shape[0] == 1):
        return None
    (wa, ma, va), (wb, mb, vb) = ca, cb
    na, nb = wa.shape[0], wb.shape[0]

    def pair(x, y, combine):
        z = combine(x.reshape((na, 1) + x.shape[1:]), y.reshape((1, nb) + y.shape[1:]))
        return z.reshape((na * nb,) + z.shape[2:])

    sign = -1.0 if subtract else 1.0
    return (
        pair(wa, wb, np.multiply),
        pair(ma, mb, lambda x, y: x + sign * y),
        pair(va, vb, np.add),
    )


def _signal_axes(inputs, rank: int) -> set[int]:
    axes: set[int] = set()
    for m in inputs:
        if m is not None:
            axes |= _axes(_lift(m.mean, rank), _lift(m.var, rank))
    return axes


@rule("Pow", fusion=True)
def power(inputs, ctx: RuleContext):
    """y = x^c (c constant) or c^x, element-wise over x's source: E = int f N, Var = int f^2 N
    - E^2 (elementwise.apply_elementwise); two signals only when both are element-wise
    functions of a common ancestor (fusion.fused_elementwise)."""
    fused = _two_signals_fused(inputs, ctx)
    if fused is not None:
        return fused
    return apply_elementwise(inputs, ctx)


# ---------------------------------------------------------------------------------------------
# Sum, Mean


@rule("Sum", "Mean")
def sum_mean(inputs, ctx: RuleContext):
    """y = sum_i x_i (Mean: divided by n), operands independent, constants exact:
    E = sum_i mu_i, Var = sum_i nu_i (Mean: E / n, Var / n^2)."""
    rank = _out_rank(ctx)
    if len(inputs) == 1:
        return [signal(inputs, 0)]
    mean, var = np.float64(0.0), np.float64(0.0)
    for i in range(len(inputs)):
        m, v, _ = _operand(inputs, ctx, i, rank)
        mean, var = mean + m, var + v
    if ctx.node.op_type == "Mean":
        n = len(inputs)
        mean, var = mean / n, var / n**2
    return [_finish(mean, var, _signal_axes(inputs, rank))]


# ---------------------------------------------------------------------------------------------
# Max, Min


def _clark(ma, va, mb, vb, minimum: bool):
    """Max (Min) of independent Gaussians (Clark 1961): theta = sqrt(va + vb),
    alpha = (ma - mb) / theta, E = ma Phi(alpha) + mb Phi(-alpha) + theta phi(alpha),
    E[max^2] = (ma^2+va) Phi(alpha) + (mb^2+vb) Phi(-alpha) + (ma+mb) theta phi(alpha);
    min = a + b - max, min^2 = a^2 + b^2 - max^2."""
    theta = np.sqrt(va + vb)
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.where(theta > 0, (ma - mb) / np.where(theta > 0, theta, 1.0), 0.0)
    cdf, cdf_neg = special.ndtr(alpha), special.ndtr(-alpha)
    pdf = np.exp(-0.5 * alpha**2) / np.sqrt(2 * np.pi)
    e = ma * cdf + mb * cdf_neg + theta * pdf
    e2 = (ma**2 + va) * cdf + (mb**2 + vb) * cdf_neg + (ma + mb) * theta * pdf
    e = np.where(theta > 0, e, np.maximum(ma, mb))
    e2 = np.where(theta > 0, e2, np.maximum(ma, mb) ** 2)
    if minimum:
        e, e2 = ma + mb - e, ma**2 + va + mb**2 + vb - e2
    return e, np.maximum(e2 - e**2, 0.0)


def _fused_extreme(inputs, ctx: RuleContext, minimum: bool):
    """Max/Min of two signals that are element-wise functions f_a, f_b of one ancestor T
    (``ctx.fusion``; LeakyRelu written as Max(x, 0.2 x)): h(z) = max(f_a(z), f_b(z)) over T's
    distribution."""
    fusion = ctx.fusion
    if fusion is None:
        return None
    fa, fb = compose(fusion.chain_a), compose(fusion.chain_b)
    pick = np.minimum if minimum else np.maximum
    key = ("FusedMin" if minimum else "FusedMax",
           tuple(f.key for f in fusion.chain_a), tuple(f.key for f in fusion.chain_b))  # fmt: skip
    h = Elementwise(key, lambda z: pick(fa(z), fb(z)))
    shape = ctx.graph.shape(fusion.tensor)
    rank = _out_rank(ctx)
    if shape is not None and len(shape) != rank:
        return None
    try:
        return [apply_fn(fusion.moments, h, rank)]
    except RuleError:
        return None


def _monte_carlo_extreme(signals, consts, ctx: RuleContext, rank: int, minimum: bool):
    """Max/Min of independent signals (sampled from their sources) and constants, per cell of
    the broadcast grid of their statistics."""
    arrays = [a for m in signals for a in (_lift(m.mean, rank), _lift(m.var, rank))] + consts
    grid = np.broadcast_shapes(*(np.shape(a) for a in arrays))
    size = int(np.prod(grid)) if grid else 1
    if size > 4096:
        raise RuleError("too many distinct statistics for a Monte Carlo max")
    n = max(20_000, 4_000_000 // size)
    rng = ctx.rng()
    pick = np.minimum if minimum else np.maximum
    out = None
    for m in signals:
        src = m.source
        if src is not None and max(np.ndim(src.mean), np.ndim(src.var)) <= rank:
            src_mean, src_var = _lift(src.mean, rank), _lift(src.var, rank)
            z = rng.standard_normal((n, *grid)) * np.sqrt(src_var) + src_mean
            z = compose(src.chain)(z)
        else:
            z = rng.standard_normal((n, *grid)) * np.sqrt(_lift(m.var, rank)) + _lift(m.mean, rank)
        out = z if out is None else pick(out, z)
    for c in consts:
        out = pick(out, c)
    return out.mean(axis=0), out.var(axis=0)


@rule("Max", "Min", fusion=True)
def extreme(inputs, ctx: RuleContext):
    """Element-wise Max/Min. One signal and constants c: y = max(x, c) element-wise over x's
    source (quadrature). Two signals: fused over a common ancestor when both are element-wise
    functions of it (Max(x, a x) = LeakyRelu); independent Gaussians: Clark's closed form
    (theta = sqrt(nu1+nu2), alpha = (mu1-mu2)/theta, E = mu1 Phi(alpha) + mu2 Phi(-alpha) +
    theta phi(alpha), E[y^2] = (mu1^2+nu1) Phi(alpha) + (mu2^2+nu2) Phi(-alpha) +
    (mu1+mu2) theta phi(alpha)); otherwise Monte Carlo from the inputs' sources."""
    minimum = ctx.node.op_type == "Min"
    rank = _out_rank(ctx)
    pick = np.minimum if minimum else np.maximum
    signals = [m for m in inputs if m is not None]
    consts = []
    for i, m in enumerate(inputs):
        if m is None:
            consts.append(_operand(inputs, ctx, i, rank)[0])
    if len(signals) == 1:
        if not consts:
            return [signals[0]]
        c = consts[0]
        for other in consts[1:]:
            c = pick(c, other)
        x = signals[0]
        if np.size(c) > _CONST_CAP:
            raise RuleError("a constant too large to track per element")
        f = Elementwise(("Min" if minimum else "Max", *digest(c)), lambda z: pick(z, c))
        out = apply_fn(x, f, rank)
        if len(_axes(out.mean, out.var)) > 1:
            return [_finish(out.mean, out.var, _axes(_lift(x.mean, rank), _lift(x.var, rank)))]
        return [out]
    if len(signals) == 2 and not consts:
        fused = _fused_extreme(inputs, ctx, minimum)
        if fused is not None:
            return fused
        gaussian = all(m.source is None or not m.source.chain for m in signals)
        if gaussian:
            a, b = signals
            mean, var = _clark(
                _lift(a.mean, rank),
                _lift(a.var, rank),
                _lift(b.mean, rank),
                _lift(b.var, rank),
                minimum,
            )
            return [_finish(mean, var, _signal_axes(inputs, rank))]
    mean, var = _monte_carlo_extreme(signals, consts, ctx, rank, minimum)
    return [_finish(mean, var, _signal_axes(inputs, rank))]


# ---------------------------------------------------------------------------------------------
# Where


@rule("Where")
def where(inputs, ctx: RuleContext):
    """y = cond ? a : b with a known condition (constant, from an attention_mask input, or IsNaN
    of a finite prediction: masks.condition); a or b may hold -inf (a mask: kept per element,
    as is any grid that reaches a Softmax). Per element a mixture, folded by the law of
    total variance: E_k = mean_f (cond a_mu + (1-cond) b_mu), Var_k = mean_f (cond a_nu +
    (1-cond) b_nu) + var_f E. With a fraction p of True along folded axes this is
    E = p mu_a + (1-p) mu_b, Var = p(nu_a + mu_a^2) + (1-p)(nu_b + mu_b^2) - E^2."""
    cond = masks.condition(ctx, 0, inputs)
    if cond is None:
        raise RuleError("the condition depends on a signal")
    rank = _out_rank(ctx)
    cond = _lift(np.asarray(cond, dtype=bool), rank)
    if np.all(cond) and inputs[1] is not None:
        return [inputs[1]]
    if not np.any(cond) and inputs[2] is not None:
        return [inputs[2]]
    ma, va, _ = _operand(inputs, ctx, 1, rank, masked=True)
    mb, vb, _ = _operand(inputs, ctx, 2, rank, masked=True)
    mean, var = np.where(cond, ma, mb), np.where(cond, va, vb)
    axes = _signal_axes(inputs, rank)
    if np.isneginf(mean).any() or masks.feeds_softmax(ctx):
        if mean.size > masks.OFFSET_CAP:
            raise RuleError("an attention mask too large to keep per element")
        return [Moments(mean, np.broadcast_to(var, mean.shape))]
    return [_finish(mean, var, axes)]


# ---------------------------------------------------------------------------------------------
# Concat


def _piece(inputs, ctx: RuleContext, i: int, rank: int):
    m = inputs[i]
    if m is not None:
        return m.expand_rank(rank) if m.rank else m
    c = ctx.const(i)
    if c is None:
        raise RuleError(f"input {i} is neither a signal nor constant")
    c = _lift(np.asarray(c, dtype=np.float64), rank)
    return Moments(c, np.zeros_like(c))


def _concat_grids(pieces, sizes, axis: int, rank: int) -> Moments | None:
    """The pieces' whole statistics grids concatenated along ``axis`` (None when too large)."""
    grids = [np.broadcast_arrays(*(_lift(a, rank) for a in (p.mean, p.var))) for p in pieces]
    grids = [(m.reshape((1,) * rank), v.reshape((1,) * rank)) if m.ndim == 0 else (m, v)
             for m, v in grids]
    common = [max(m.shape[a] for m, _ in grids) for a in range(rank)]
    common[axis] = 1
    if int(np.prod(common)) * sum(sizes) > _GRID_CAP:
        return None
    means, variances = [], []
    for (m, v), n in zip(grids, sizes):
        shape = list(common)
        shape[axis] = n
        means.append(np.broadcast_to(m, shape))
        variances.append(np.broadcast_to(v, shape))
    return Moments(np.concatenate(means, axis=axis), np.concatenate(variances, axis=axis))


@rule("Concat")
def concat(inputs, ctx: RuleContext):
    """Concatenation along ``axis``; empty inputs (an empty key/value cache) are dropped, and
    one input left is passed on unchanged. When an input tracks the concat axis, or the inputs'
    statistics differ, the per-index statistics concatenate (exact, every other tracked axis kept when the grid is small).
    Otherwise, along the tracked axis t (if any; pooled otherwise), the inputs mix with weights
    w_i = n_i / n (their sizes along the concat axis):
    E_t = sum_i w_i mu_it, Var_t = sum_i w_i (nu_it + mu_it^2) - E_t^2."""
    out_shape = ctx.out_shape(0)
    rank = len(out_shape)
    axis = ctx.attr("axis") % rank
    sizes = [ctx.in_shape(i)[axis] for i in range(len(inputs))]
    kept = [i for i, n in enumerate(sizes) if n > 0]
    if len(kept) == 1 and inputs[kept[0]] is not None:
        return [inputs[kept[0]]]
    pieces = [_piece(inputs, ctx, i, rank) for i in kept]
    sizes = [sizes[i] for i in kept]
    tracked = sorted({a for p in pieces if p.rank for a in p.tracked_axes()})
    # pieces that differ (a class token before the patch tokens) make the concat axis tracked
    if axis in tracked or len({p.total() for p in pieces}) > 1:
        grid = _concat_grids(pieces, sizes, axis, rank)
        if grid is not None:
            return [grid]
        means, variances = [], []
        for p, n in zip(pieces, sizes):
            m, v = p.values_along(axis, n)
            means.append(m)
            variances.append(v)
        return [Moments.along(np.concatenate(means), np.concatenate(variances), axis, rank)]
    w = np.asarray(sizes, dtype=np.float64) / sum(sizes)
    if tracked:
        t = tracked[-1] if len(tracked) > 1 and tracked[-1] == rank - 1 else tracked[0]
        n = out_shape[t]
        stats = [p.values_along(t, n) for p in pieces]
        mean = sum(wi * m for wi, (m, _) in zip(w, stats))
        e2 = sum(wi * (v + m**2) for wi, (m, v) in zip(w, stats))
        return [Moments.along(mean, e2 - mean**2, t, rank)]
    totals = [p.total() for p in pieces]
    mean = sum(wi * m for wi, (m, _) in zip(w, totals))
    e2 = sum(wi * (v + m**2) for wi, (m, v) in zip(w, totals))
    return [Moments.scalar(mean, e2 - mean**2)]


__all__ = ["binary", "concat", "extreme", "fold", "power", "sum_mean", "where"]
