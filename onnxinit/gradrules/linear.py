"""Backward rules of the linear layers with constant weights: Gemm, MatMul, Conv.

For ``y_j = sum_i W_ji x_i + b_j`` the input gradient is ``dx_i = sum_j W_ji dy_j``:

    E[dx_i]   = sum_j W_ji E[dy_j]
    Var[dx_i] = sum_j W_ji^2 Var[dy_j]

or with the covariance across features (``Gradient.cov``, kept up to MAX_COV features)
``Cov[dx] = W^T Cov[dy] W``.

with the actual weights. The weight gradient sums over the R rows (samples, positions) a layer
is applied to, ``dW_ji = sum_r x_ri dy_rj``; with rows independent of each other and x
independent of dy::

    E[dW_ji^2] = R E[x_i^2] E[dy_j^2] + R (R - 1) E[x_i]^2 E[dy_j]^2

pooled over the weight's elements; the bias gradient ``db_j = sum_r dy_rj`` has mean
``R E[dy_j]`` and variance ``R Var[dy_j]``.

Conv: input position p receives output q's gradient through tap t when
``p = q*stride - pad + t*dilation`` (:mod:`.windows`); with ``A[c, t] = sum_o W[o, c, t]^2
Var[dy_o]``, ``Var[dx_c(p)] = sum_t A[c, t] profile(q(p, t))``: zero padding is exact (a
border input receives fewer taps). A sample's spatial mean of dx (what a batch normalization
before the Conv removes):
``Var = (1/S_in^2) sum_o [c_o (sum_t W_oct n_t)^2 + (Var[dy_o] - c_o) sum_t W_oct^2 n_t]``
with ``c_o = (S_out u_o - Var[dy_o]) / (S_out - 1)`` the covariance of two positions of one
sample (``u_o`` the output gradient's ``sample_var``) and ``n_t`` the positions tap t connects
(with u_o in place of c_o a 1x1 Conv had counted the independent part twice: 0.44 instead of
0.25 of Var on 2x2 maps of independent positions).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..rules.context import RuleError
from ..rules.linear import begin_pads
from .context import GradContext
from .attention import matmul_activations
from .gradient import MAX_COV, Gradient, along, feature_cov
from .registry import rule
from .tokens import as_profile, axes_of, kept_unless
from .windows import (pattern_of_positions, pattern_weights, reach_patterns, tap_counts,
                      tap_weighted_map)


def dense_input(g: Gradient, w: np.ndarray, rank: int) -> Gradient:
    """dx = dy W^T for ``w`` [in, out] along the last axis."""
    n_in, n_out = w.shape
    g = g.expand_rank(rank)
    m, v = g.values_along(rank - 1, n_out)
    mean = w @ m
    cov = feature_cov(g) if max(n_in, n_out) <= MAX_COV else None
    tokens = kept_unless(g.tokens, rank, [rank - 1])
    if cov is not None and cov.shape == (n_out, n_out):
        cov = (w @ cov) @ w.T
        out = along(mean, np.diag(cov).copy(), rank - 1, rank)
        return Gradient(out.mean, out.var, cov=cov, tokens=tokens)
    out = along(mean, (w * w) @ v, rank - 1, rank)
    return replace(out, tokens=tokens)


def dense_weight(x_second: float, x_mean_sq: float, g: Gradient, rows: int, rank: int,
                 n_out: int, x_tokens=None) -> Gradient:
    """Pooled statistics of dW = sum_r x_r dy_r (see the module docstring); rows that are
    tokens of one sample add with their covariances (``x_tokens``, the forward field of x, and
    ``g.tokens``): per sample ``sum_{s,t} (nu_x cx[s,t] + mu_x^2)(nu_g cg[s,t] + m^2)``."""
    m, v = g.expand_rank(rank).values_along(rank - 1, n_out)
    g2, gm2 = float(np.mean(v + m * m)), float(np.mean(m * m))
    n = _token_count(x_tokens, g.tokens, rank)
    cx = x_tokens.cov if n > 1 and x_tokens is not None else np.eye(n)
    cg = g.tokens.cov if n > 1 and g.tokens is not None else np.eye(n)
    per_sample = float(np.sum(((x_second - x_mean_sq) * cx + x_mean_sq) * ((g2 - gm2) * cg + gm2)))
    samples = rows / n
    second = samples * per_sample + samples * (samples - 1) * n * n * x_mean_sq * gm2
    return Gradient.scalar(0.0, second)


def _token_count(x_tokens, g_tokens, rank: int) -> int:
    """The tokens the rows of a dense layer are grouped in: the fields' common count (1 when
    neither has one, or they disagree on where the tokens are)."""
    fields = [t for t in (x_tokens, g_tokens) if t is not None]
    axes = [axes_of(t, rank) for t in fields]
    if not fields or any(a is None or rank - 1 in a for a in axes):
        return 1
    if any(a != axes[0] or t.n != fields[0].n or t.stride != 1 for a, t in zip(axes, fields)):
        return 1
    return fields[0].n


def dense_bias(g: Gradient, rows: int, rank: int, n_out: int) -> Gradient:
    m, v = g.expand_rank(rank).values_along(rank - 1, n_out)
    return Gradient(rows * m, rows * v).pooled()


def _x_stats(ctx: GradContext, index: int, size: int, rank: int) -> tuple[float, float]:
    """(E[x^2], E[x]^2) of the input averaged over its features."""
    x = ctx.x(index).expand_rank(rank)
    mean, var = x.values_along(rank - 1, size)
    return float(np.mean(var + mean**2)), float(np.mean(mean**2))


def linear_centred(dx: Gradient, g: Gradient) -> Gradient:
    """dx of ``W^T dy`` with dy's batch-centred part (:class:`.batch_share.Centred`)."""
    return replace(dx, centred=g.centred.linear() if g.centred is not None else None)


@rule("MatMul")
def matmul(grads, ctx: GradContext):
    """y = x W with W constant [K, M] (x [..., K]); see the module docstring."""
    g = grads[0]
    if ctx.is_signal(0) and ctx.is_signal(1):
        return matmul_activations(grads, ctx)
    if not ctx.is_signal(0):
        raise RuleError("MatMul whose constant operand comes first")
    w = ctx.const(1)
    if w is None or w.ndim != 2:
        raise RuleError("MatMul weight is not a constant matrix")
    w = np.asarray(w, dtype=np.float64)
    rank = len(ctx.out_shape())
    rows = int(np.prod(ctx.out_shape()[:-1]))
    out = [linear_centred(dense_input(g, w, rank), g), None]
    if ctx.is_parameter(1):
        out[1] = dense_weight(*_x_stats(ctx, 0, w.shape[0], rank), g, rows, rank, w.shape[1],
                              as_profile(ctx.x(0), ctx.in_shape(0)))
    return out


@rule("Gemm")
def gemm(grads, ctx: GradContext):
    """y = alpha A' B' + beta C with A the signal and B constant; see the module docstring."""
    g = grads[0]
    if not ctx.is_signal(0) or ctx.is_signal(1):
        raise RuleError("Gemm whose second operand is a signal")
    w = ctx.const(1)
    if w is None:
        raise RuleError("Gemm weight is not constant")
    w = np.asarray(w, dtype=np.float64)
    if ctx.attr("transB", 0):
        w = w.T
    alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
    if ctx.attr("transA", 0):
        raise RuleError("Gemm with transA")
    rows = ctx.out_shape()[0]
    out = [linear_centred(dense_input(g, alpha * w, 2), g), None, None]
    if ctx.is_parameter(1):
        out[1] = dense_weight(*_x_stats(ctx, 0, w.shape[0], 2), g.scaled(alpha), rows, 2,
                              w.shape[1])
    if ctx.has_input(2) and ctx.is_parameter(2):
        out[2] = dense_bias(g.scaled(beta), rows, 2, w.shape[1])
    return out


def conv_geometry(ctx: GradContext, kernel):
    x_shape, y_shape = ctx.in_shape(0), ctx.out_shape()
    n = len(kernel)
    strides = list(ctx.attr("strides", [1] * n))
    dilations = list(ctx.attr("dilations", [1] * n))
    begins = begin_pads(ctx, x_shape[2:], y_shape[2:], kernel, strides, dilations)
    return x_shape, y_shape, strides, dilations, begins


# input channels x positions up to which the input gradient's variance is mapped per position
# (with the output gradient's spatial profile); above it, per set of reaching taps, no profile
DENSE_POSITIONS = 1 << 24


def shared_covariance(u: np.ndarray, v: np.ndarray, positions: int) -> np.ndarray:
    """The covariance of dy at two positions of one sample, ``c = (S u - v) / (S - 1)`` from
    the variance u of a sample's spatial mean over S positions (at least 0; ``u`` at S = 1)."""
    if positions <= 1:
        return u
    return np.maximum((positions * u - v) / (positions - 1), 0.0)


def shared_part(tap_sum: np.ndarray, patterns: np.ndarray, u: np.ndarray, v: np.ndarray,
                s_out: int) -> np.ndarray:
    """``[C_in, P]``: what the covariance of dy between the positions of one sample adds to
    Var[dx] at an input position receiving the set of taps V (``patterns[:, p]`` from
    :func:`~.windows.reach_patterns`). With ``c_o = (S u_o - v_o) / (S - 1)`` the covariance
    of two positions (u the variance of a sample's spatial mean):
    ``sum_o c_o ((sum_{t in V} W_oct)^2 - sum_{t in V} W_oct^2)`` (zero on average over
    random weights, not for these weights)."""
    if s_out <= 1 or tap_sum.shape[1] == 1:
        return np.zeros((tap_sum.shape[0], patterns.shape[1]))
    shared = shared_covariance(u, v, s_out)
    sums = np.einsum("cto,tp->cpo", tap_sum, patterns)
    squares = np.einsum("cto,tp->cpo", tap_sum**2, patterns)
    return (sums**2 - squares) @ shared


def spread(tap_energy: np.ndarray, tap_sum: np.ndarray, g: Gradient, ctx: GradContext, kernel,
           mean_taps: np.ndarray) -> Gradient:
    """The input gradient of a window op from per-(input channel, tap) sums over output
    channels: ``tap_energy[c, t] = sum_o W_oct^2 Var[dy_o]``, ``tap_sum[c, t, o] =
    W_oct`` (for the sample mean) and ``mean_taps[c, t] = sum_o W_oct E[dy_o]``.

    Positions that receive the same set of taps have the same mean; their variance also
    follows the output gradient's spatial profile, mapped per position, unless the map would
    exceed ``DENSE_POSITIONS`` entries: then the profile is left out (it matters near the
    borders, a vanishing share of such a map) and the memory stays bounded."""
    x_shape, y_shape, strides, dilations, begins = conv_geometry(ctx, kernel)
    rank, c_out = len(y_shape), y_shape[1]
    s_in, s_out = int(np.prod(x_shape[2:])), int(np.prod(y_shape[2:]))
    patterns, axis_ids = reach_patterns(x_shape[2:], y_shape[2:], kernel, strides, dilations,
                                        begins)
    weights = pattern_weights(axis_ids)
    counts = patterns @ weights * s_in  # [T]: input positions (one output each) per tap
    m_out, v_out = g.channels(rank, c_out)
    u_out = np.minimum(g.channel_sample_var(rank, c_out, s_out), v_out)
    extra = shared_part(tap_sum, patterns, u_out, v_out, s_out)  # [C_in, P]
    mean_cells = mean_taps @ patterns
    mean = mean_cells @ weights
    var = ((mean_cells - mean[:, None]) ** 2) @ weights
    if tap_energy.shape[0] * s_in <= DENSE_POSITIONS:
        profile = g.profile if g.profile is not None and g.profile.shape == tuple(y_shape[2:]) \
            else np.ones(y_shape[2:])
        var_map = tap_weighted_map(tap_energy, profile, x_shape[2:], kernel, strides,
                                   dilations, begins)  # [C_in, S_in]
        var_map += extra[:, pattern_of_positions(axis_ids)]
        var = var + var_map.mean(axis=1)
        total = var_map.sum(axis=0)
        new_profile = (total / total.mean()).reshape(x_shape[2:]) if total.mean() > 0 else None
    else:
        var = var + (tap_energy @ patterns + extra) @ weights
        new_profile = None
    shared = shared_covariance(u_out, v_out, s_out)
    coherent = np.einsum("cto,t->co", tap_sum, counts) ** 2 @ shared
    spread_part = np.einsum("cto,t->co", tap_sum**2, counts) @ (v_out - shared)
    sample_var = (coherent + spread_part) / s_in**2
    return along(mean, var, 1, rank, sample_var, new_profile)


def conv_weight(ctx: GradContext, g: Gradient, kernel, rank: int, c_in: int,
                c_out: int) -> Gradient:
    """Pooled E[dW^2] of a Conv, ``dW_oct = sum_n sum_q x[n, c, p(q, t)] dy[n, o, q]`` over the
    n_t positions tap t connects. Within a sample, pairs of positions share the input mean
    (E[x x'] = mu^2) and the gradient's sample mean (E[dy dy'] = u + m^2, u its
    ``sample_var``); samples are independent:
    ``E[dW^2] = N [n_t^2 mu^2 (u + m^2) + n_t (E[x^2] (Var[dy] - u) + Var[x] (u + m^2))]
    + N (N - 1) n_t^2 mu^2 m^2``."""
    x_shape, y_shape, strides, dilations, begins = conv_geometry(ctx, kernel)
    s_out = int(np.prod(y_shape[2:]))
    x = ctx.x(0).expand_rank(rank)
    xm, xv = x.values_along(1, c_in)
    m, v = g.channels(rank, c_out)
    u = np.minimum(g.channel_sample_var(rank, c_out, s_out), v)
    n_t = float(np.mean(tap_counts(x_shape[2:], y_shape[2:], kernel, strides, dilations,
                                   begins)))
    mu2, x2, xvar = float(np.mean(xm**2)), float(np.mean(xv + xm**2)), float(np.mean(xv))
    coherent, dy2 = float(np.mean(u + m * m)), float(np.mean(m * m))
    spread = float(np.mean(v - u))
    n = ctx.batch
    second = n * (n_t**2 * mu2 * coherent + n_t * (x2 * spread + xvar * coherent))
    second += n * (n - 1) * n_t**2 * mu2 * dy2
    return Gradient.scalar(0.0, second)


@rule("Conv")
def conv(grads, ctx: GradContext):
    """Conv with a constant weight; see the module docstring."""
    g = grads[0]
    w = ctx.const(1)
    if not ctx.is_signal(0) or w is None:
        raise RuleError("Conv needs a signal input and a constant weight")
    w = np.asarray(w, dtype=np.float64)
    groups = int(ctx.attr("group", 1))
    c_out, c_per = w.shape[:2]
    kernel = list(w.shape[2:])
    x_shape, y_shape = ctx.in_shape(0), ctx.out_shape()
    rank = len(y_shape)
    m_out, v_out = g.channels(rank, c_out)
    taps = int(np.prod(kernel))
    wf = w.reshape(c_out, c_per, taps)
    c_in = x_shape[1]
    # per input channel: the weights of the output channels of its group
    tap_sum = np.zeros((c_in, taps, c_out))
    per_group = c_out // groups
    for k in range(groups):
        outs = slice(k * per_group, (k + 1) * per_group)
        ins = slice(k * c_per, (k + 1) * c_per)
        tap_sum[ins, :, outs] = wf[outs].transpose(1, 2, 0)
    energy = (tap_sum**2) @ v_out
    mean_taps = tap_sum @ m_out
    out = [linear_centred(spread(energy, tap_sum, g, ctx, kernel, mean_taps), g), None, None]
    s_out = int(np.prod(y_shape[2:]))
    rows = ctx.batch * s_out
    if ctx.is_parameter(1):
        out[1] = conv_weight(ctx, g, kernel, rank, c_in, c_out)
    if ctx.has_input(2) and ctx.is_parameter(2):
        u = g.channel_sample_var(rank, c_out, s_out)
        out[2] = Gradient(rows * m_out, ctx.batch * s_out**2 * u).pooled()
    return out
