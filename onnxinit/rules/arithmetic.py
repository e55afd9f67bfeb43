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
signal, the last axis the constant varies along) by the law of total variance (grids.py), which
is exact for the per-index statistics over the folded axes:

    E_k = mean_f E_kf,   Var_k = mean_f Var_kf + var_f E_kf

e.g. for a positional-embedding Add of ``c[S, D]``: ``Var_d = nu_d + var_s c[s, d]``. Two signals
that are element-wise functions of one common ancestor (``x * Sigmoid(x)``) are fused first
(``fusion.fused_elementwise``); otherwise the two signals are taken as independent.

Max and Min laws are in extreme_laws.py. Attention masks (masks.py): a constant holding -inf is allowed in Add, Sub and Where (the
elements it reaches are masked: mean -inf, variance 0), and a grid that reaches a Softmax keeps
one value per element up to ``masks.OFFSET_CAP`` cells (a ``finfo.min`` or -100 offset is a
position the Softmax ignores, not variance to fold): ``masks.logit_offset``.
"""

from __future__ import annotations

import numpy as np

from . import masks
from .id_masks import mixes_ids
from .indicator_share import counted_share
from .id_mixtures import mixed_moments
from ..moments import Elementwise, Moments
from .centring import centred
from .shifted_logsumexp import shifted_logsumexp
from .max_shifted import max_shifted
from .constant_cells import per_cell_law
from .context import RuleContext, RuleError, signal
from .elementwise import INPUT_LAWS, apply_elementwise, apply_fn, digest
from .extreme_laws import clark, fused_extreme, monte_carlo_extreme
from .fusion import fused_elementwise
from .grids import GRID_CAP, KEEP_CAP, finish, operand, out_rank, signal_axes, varies, varying_axes
from .joint_samples import joint_moments
from .joint_source import through_mask
from .linear_share import shared_sum
from .layout import positions_dense
from .mixture import binary_independent, lift, sum_mixture
from .positional import concat_channels, positions_binary
from .registry import rule
from .row_mean_scale import centred_sum, mean_times_scale
from .row_norm import response_normalised, row_normalised
from .shared_projection import with_shared_row
from .shared_mixtures import with_shared_mixtures
from .self_attention_share import self_attention_sum
from .shifted_sum import shifted_sum
from .pool_residual import pool_residual
from .skip_share import skip_sum
from .unit_rows import unit_rows
from .zero_branch import zero_branch_sum

_CONST_CAP = 1 << 16  # constants larger than this are not handed to the element-wise rules


# ---------------------------------------------------------------------------------------------
# which machinery takes a node


def _same_layout(inputs, ctx: RuleContext, rank: int) -> bool:
    """True when the single signal's element-wise rule can take this node without losing
    anything: every constant is small and varies only along axes the signal tracks (or the
    signal is scalar and the constants vary along one axis)."""
    which = [i for i, m in enumerate(inputs) if m is not None]
    if len(which) != 1:
        return False
    x = inputs[which[0]]
    x_axes = varying_axes(lift(x.mean, rank), lift(x.var, rank))
    c_axes: set[int] = set()
    for i, name in enumerate(ctx.node.input):
        if i == which[0] or not name:
            continue
        c = ctx.const(i)
        if c is None or np.size(c) > _CONST_CAP or not np.all(np.isfinite(c)):
            return False
        c_axes |= varying_axes(lift(c, rank))
    return c_axes <= x_axes or (not x_axes and len(c_axes) <= 1)


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
    c / x, element-wise) is measured. Add/Sub of mixtures of the same tokens (attentions over
    one sequence and the sequence itself): their cross-covariance added (shared_mixtures.py)."""
    out = with_shared_mixtures(inputs, ctx, _binary(inputs, ctx))
    if len(out) == 1 and ctx.node.op_type in ("Add", "Sub"):  # linear images of one tensor
        out = [shared_sum(inputs, ctx, out[0])]
    return out


def _binary(inputs, ctx: RuleContext):
    op = ctx.node.op_type
    rank = out_rank(ctx)
    if (kept := zero_branch_sum(inputs, ctx)) is not None:  # h + 0: h, its law included
        return [kept]
    if mixes_ids(ctx) and masks.feeds_softmax(ctx) and (mixed := mixed_moments(ctx)):
        return mixed  # logits mixed with a mask of the token ids (id_masks.py)
    offset = masks.logit_offset(inputs, ctx, rank)
    if offset is not None:
        return [offset]
    if (counted := counted_share(inputs, ctx, rank)) is not None:  # a one-hot over its count
        return [finish(*counted, signal_axes(inputs, rank))]
    if (joint := joint_moments(inputs, ctx)) is not None:  # correlated through element-wise nodes
        return [joint]
    if op == "Add" and (lse := shifted_logsumexp(inputs, ctx)) is not None:
        return [lse]  # log(sum exp(x - s)) + s = logsumexp(x)
    if (row := max_shifted(ctx)) is not None:  # x - max(x): drawn rows
        return [row]
    if (shifted := shifted_sum(inputs, ctx)) is not None:  # x_t and x_{t-1} of one sequence
        return [shifted]
    normalised = row_normalised(inputs, ctx, rank)
    if normalised is None:
        normalised = response_normalised(inputs, ctx, rank)
    if normalised is None:
        normalised = unit_rows(inputs, ctx, rank)
    if normalised is None:
        normalised = mean_times_scale(inputs, ctx, rank) or centred_sum(inputs, ctx, rank)
    if normalised is not None:
        return [finish(*normalised, signal_axes(inputs, rank))]
    fused = _two_signals_fused(inputs, ctx)
    if fused is not None:
        return fused
    if (shifted := centred(inputs, ctx, rank)) is not None:  # x - mean(x): x's law, shifted
        return [shifted]
    if (skipped := pool_residual(inputs, ctx, op) or skip_sum(inputs, ctx, rank)
            or self_attention_sum(inputs, ctx, rank)) is not None:
        return [skipped]  # AveragePool(x) -/+ x in closed form, else B + (a copy of B, moved)
    if _same_layout(inputs, ctx, rank):
        try:
            return apply_elementwise(inputs, ctx)
        except RuleError:
            if op == "Div" and inputs[1] is not None:
                raise
    cells = per_cell_law(inputs, ctx, rank)
    if cells is not None:
        return [cells]
    spatial = positions_binary(inputs, ctx, op, rank)
    if spatial is not None:
        return [spatial]
    # position classes the per-cell path refused: spelled out, not pooled by operand()
    inputs = [positions_dense(m, ctx.in_shape(i)) if m is not None and m.spatial is not None
              else m for i, m in enumerate(inputs)]
    if all(m is not None for m in inputs[:2]) and through_mask(ctx.graph, ctx.node.input[:2]):
        raise RuleError("operands computed from one signal through a mask of its values")
    if op == "Div":
        if inputs[1] is not None:
            raise RuleError("division by a signal")
        mb, vb, _ = operand(inputs, ctx, 1, rank)
        if np.any(mb == 0):
            raise RuleError("division by a constant holding zeros")
        b = (1.0 / mb, vb)
        op = "Mul"
    else:
        b = operand(inputs, ctx, 1, rank)[:2]
    a = operand(inputs, ctx, 0, rank)[:2]
    mean, var = binary_independent(op, a, b)
    if op == "Mul" and all(m is not None for m in inputs[:2]):  # one row's linear images
        mean, var = with_shared_row(inputs, ctx, mean, var)
    keep = masks.OFFSET_CAP if varies(mean) and masks.feeds_softmax(ctx) else KEEP_CAP
    out = finish(mean, var, signal_axes(inputs, rank), keep)
    if op in ("Add", "Sub") and all(m is not None for m in inputs) and out.mean.shape == np.shape(mean):
        mixture = sum_mixture(inputs[0], inputs[1], rank, op == "Sub")
        if mixture is not None:
            out = Moments(out.mean, out.var, None, mixture)
    return [out]


@rule("Pow", fusion=True)
def power(inputs, ctx: RuleContext):
    """y = x^c (c constant) or c^x, element-wise over x's source: E = int f N, Var = int f^2 N
    - E^2 (elementwise.apply_elementwise); two signals only when both are element-wise
    functions of a common ancestor (fusion.fused_elementwise)."""
    if (joint := joint_moments(inputs, ctx)) is not None:
        return [joint]
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
    rank = out_rank(ctx)
    if len(inputs) == 1:
        return [signal(inputs, 0)]
    mean, var = np.float64(0.0), np.float64(0.0)
    for i in range(len(inputs)):
        m, v, _ = operand(inputs, ctx, i, rank)
        mean, var = mean + m, var + v
    if ctx.node.op_type == "Mean":
        n = len(inputs)
        mean, var = mean / n, var / n**2
    return [finish(mean, var, signal_axes(inputs, rank))]


# ---------------------------------------------------------------------------------------------
# Max, Min


@rule("Max", "Min", fusion=True)
def extreme(inputs, ctx: RuleContext):
    """Element-wise Max/Min. One signal and constants c: y = max(x, c) element-wise over x's
    source (quadrature). Two signals: fused over a common ancestor when both are element-wise
    functions of it (Max(x, a x) = LeakyRelu); independent Gaussians: Clark's closed form
    (theta = sqrt(nu1+nu2), alpha = (mu1-mu2)/theta, E = mu1 Phi(alpha) + mu2 Phi(-alpha) +
    theta phi(alpha), E[y^2] = (mu1^2+nu1) Phi(alpha) + (mu2^2+nu2) Phi(-alpha) +
    (mu1+mu2) theta phi(alpha)); otherwise Monte Carlo from the inputs' sources."""
    if (joint := joint_moments(inputs, ctx)) is not None:  # correlated through element-wise nodes
        return [joint]
    minimum = ctx.node.op_type == "Min"
    rank = out_rank(ctx)
    pick = np.minimum if minimum else np.maximum
    signals = [m for m in inputs if m is not None]
    consts = []
    for i, m in enumerate(inputs):
        if m is None:
            consts.append(operand(inputs, ctx, i, rank)[0])
    if len(signals) == 1:
        if not consts:
            return [signals[0]]
        c = consts[0]
        for other in consts[1:]:
            c = pick(c, other)
        which = next(i for i, m in enumerate(inputs) if m is not None)
        x = signals[0]
        for restore in INPUT_LAWS:  # a sum of squares floored by eps: its chi-square law
            x = restore(x, ctx, ctx.node.input[which])
        if np.size(c) > _CONST_CAP:
            raise RuleError("a constant too large to track per element")
        f = Elementwise(("Min" if minimum else "Max", *digest(c)), lambda z: pick(z, c))
        out = apply_fn(x, f, rank)
        if len(varying_axes(out.mean, out.var)) > 1:
            return [finish(out.mean, out.var, varying_axes(lift(x.mean, rank), lift(x.var, rank)))]
        return [out]
    if len(signals) == 2 and not consts:
        fused = fused_extreme(inputs, ctx, minimum)
        if fused is not None:
            return fused
        gaussian = all(m.source is None or not m.source.chain for m in signals)
        if gaussian:
            a, b = signals
            mean, var = clark(
                lift(a.mean, rank),
                lift(a.var, rank),
                lift(b.mean, rank),
                lift(b.var, rank),
                minimum,
            )
            return [finish(mean, var, signal_axes(inputs, rank))]
    mean, var = monte_carlo_extreme(signals, consts, ctx, rank, minimum)
    return [finish(mean, var, signal_axes(inputs, rank))]


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
    if mixes_ids(ctx) and masks.feeds_softmax(ctx) and (mixed := mixed_moments(ctx)):
        return mixed  # a condition from the token ids (id_masks.py)
    cond = masks.condition(ctx, 0, inputs)
    if cond is None:
        raise RuleError("the condition depends on a signal")
    rank = out_rank(ctx)
    cond = lift(np.asarray(cond, dtype=bool), rank)
    if np.all(cond) and inputs[1] is not None:
        return [inputs[1]]
    if not np.any(cond) and inputs[2] is not None:
        return [inputs[2]]
    ma, va, _ = operand(inputs, ctx, 1, rank, masked=True)
    mb, vb, _ = operand(inputs, ctx, 2, rank, masked=True)
    mean, var = np.where(cond, ma, mb), np.where(cond, va, vb)
    axes = signal_axes(inputs, rank)
    if np.isneginf(mean).any() or masks.feeds_softmax(ctx):
        if mean.size > masks.OFFSET_CAP:
            raise RuleError("an attention mask too large to keep per element")
        return [Moments(mean, np.broadcast_to(var, mean.shape))]
    return [finish(mean, var, axes)]


# ---------------------------------------------------------------------------------------------
# Concat


def _piece(inputs, ctx: RuleContext, i: int, rank: int):
    m = inputs[i]
    if m is not None:
        return m.expand_rank(rank) if m.rank else m
    c = ctx.const(i)
    if c is None:
        raise RuleError(f"input {i} is neither a signal nor constant")
    c = lift(np.asarray(c, dtype=np.float64), rank)
    return Moments(c, np.zeros_like(c))


def _concat_grids(pieces, sizes, axis: int, rank: int) -> Moments | None:
    """The pieces' whole statistics grids concatenated along ``axis`` (None when too large)."""
    grids = [np.broadcast_arrays(*(lift(a, rank) for a in (p.mean, p.var))) for p in pieces]
    grids = [(m.reshape((1,) * rank), v.reshape((1,) * rank)) if m.ndim == 0 else (m, v)
             for m, v in grids]
    common = [max(m.shape[a] for m, _ in grids) for a in range(rank)]
    common[axis] = 1
    if int(np.prod(common)) * sum(sizes) > GRID_CAP:
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
    if axis == 1 and rank >= 3 and any(m is not None and m.spatial is not None for m in inputs):
        return [concat_channels(inputs, ctx, out_shape)]
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


__all__ = ["binary", "concat", "extreme", "power", "sum_mean", "where"]
