"""Covariance across tokens (``Moments.tokens``): how each op carries it.

Attention averages values over tokens, so the part of a token's value that other tokens share
passes through the average undiminished while the token-specific part shrinks (ViT: layer 0's
attention adds nearly the same vector to every token; GPT-2: a causal average over the first i
tokens makes token i and j > i share most of their value). The field records, per sequence
tensor, ``Sigma[s, t] = mean_d Cov(x[s, d], x[t, d])`` as ``nu_d * cov[s, t]`` (moments.Tokens):
one token-by-token covariance shared by the features, scaled by each feature's variance.
Attention creates it (attention.py: P V and Q K^T), Softmax reads it (softmax.py), and
:func:`carry`, called by the propagation after every rule, maps it through the other ops:

* layout ops (Reshape, Transpose, Squeeze, Unsqueeze, Flatten, Split, Slice, Gather, Concat,
  Expand) follow the token axes; selecting tokens selects rows and columns of ``cov``;
  concatenating tokens stacks the blocks (independent pieces);
* linear maps over features (Gemm, MatMul with a constant, per-feature scales, biases,
  ReduceMean over features) leave ``cov`` unchanged: ``Cov(W x_s, W x_t)_j = sum_i W_ji^2
  nu_i cov[s, t]``;
* sums of signals (residual Add) add their covariances (independent operands):
  ``Sigma = Sigma_a + Sigma_b`` (a signal without the field: ``diag`` of its per-token
  variance);
* an element-wise function f of a Gaussian with token correlation ``rho[s, t]`` has
  ``Cov(f(z_s), f(z_t)) = sum_n a_n rho^n`` with ``a_n = mean_d c_n(d)^2`` (Mehler's
  formula, hermite.py: orders 1-8, the rest of the variance put on order 9); products of two signals fused into one function of a common ancestor likewise;
  independent products ``Cov = Sigma_a Sigma_b + Sigma_a mu_b^2 + Sigma_b mu_a^2``;
* LayerNormalization over the features divides each token by its own scale: ``cov`` becomes
  the correlation (the per-token variance profile is removed);
* ReduceMean over the token axes (pooling over tokens): ``Var_d = nu_d * mean_{s,t} cov``.

What is not modelled: covariance that differs between features (one ``cov`` per tensor,
variance-weighted), correlation between different features, and dependence of an element-wise
function's Hermite coefficients on the token (computed from each feature's pooled moments).
Any other op drops the field (its absence means independent tokens).
"""

from __future__ import annotations

from collections.abc import Callable
import numpy as np

from ..moments import Moments, Tokens, compressed
from .context import RuleContext
from .elementwise import UNARY, elementwise
from .fusion import fused_function
from .hermite import coefficients
from .shape import _slice_params

_MAX_FEATURES = 4096  # features sampled for the Hermite coefficients

CARRIERS: dict[str, Callable] = {}


def _carrier(*ops: str):
    def register(fn):
        for op in ops:
            CARRIERS[op] = fn
        return fn

    return register


# ---------------------------------------------------------------------------------------------
# the field as a covariance matrix


def token_axes(t: Tokens, rank: int) -> list[int] | None:
    """The token axes (non-negative) of a rank-``rank`` tensor, None if they do not fit."""
    first = rank + t.axis
    if first < 0 or t.axis + t.span > 0:
        return None
    return list(range(first, first + t.span))


def _grid(m: Moments, rank: int) -> tuple[np.ndarray, np.ndarray]:
    m = m.expand_rank(rank)
    mean, var = np.broadcast_arrays(m.mean, m.var)
    if mean.ndim == 0:
        mean, var = mean.reshape((1,) * rank), var.reshape((1,) * rank)
    return mean, var


def profile(m: Moments, shape, axes: list[int], n: int, stride: int = 1) -> np.ndarray:
    """Per-token variance [n] (mean over the other axes; token index = (flat index // stride)
    % n)."""
    rank = len(shape)
    _, var = _grid(m, rank)
    other = tuple(a for a in range(rank) if a not in axes)
    var = var.mean(axis=other) if other else var
    full = np.broadcast_to(var, tuple(shape[a] for a in axes)).reshape(-1)
    return full.reshape(-1, n, stride).mean(axis=(0, 2))


def sigma(m: Moments | None, shape, axes: list[int], n: int,
          stride: int = 1) -> np.ndarray | None:
    """Feature-averaged token covariance [n, n] of ``m`` at the given token axes: ``mean(var)
    * cov`` with the field, else diag of its per-token variance (independent tokens)."""
    if m is None:
        return None
    t = m.tokens
    if t is not None and t.n == n and t.stride == stride and token_axes(t, len(shape)) == axes:
        return float(np.mean(m.var)) * t.cov
    return np.diag(profile(m, shape, axes, n, stride))


def attach(m: Moments, shape, axes: list[int], sig: np.ndarray | None,
           stride: int = 1) -> Moments:
    """``m`` with the variance pooled over the token axes and the field ``sig / mean diag``
    (the pooled-out per-token profile lives in the field's diagonal), tokens ``stride`` apart
    along the flattened token axes."""
    if sig is None:
        return _without(m)
    scale = float(np.mean(np.diag(sig)))
    if not np.isfinite(scale) or scale <= 0:
        return _without(m)
    rank = len(shape)
    t = Tokens(axes[0] - rank, len(axes), sig / scale, stride)
    var = _lift(m.var, rank)
    if var.ndim == 0 or not any(var.shape[a] > 1 for a in axes):
        # the variance is already the same for every token: m unchanged, its distribution kept
        return Moments(m.mean, m.var, m.source, m.mixture, t, m.rows)
    mean, var = _grid(m, rank)
    pooled = tuple(a for a in axes if var.shape[a] > 1)
    masked = np.isneginf(mean)
    if masked.any():  # masked elements keep variance 0; the others share the pooled variance
        count = np.maximum((~masked).sum(axis=pooled, keepdims=True), 1)
        var = np.where(masked, 0.0, np.where(masked, 0.0, var).sum(axis=pooled, keepdims=True) / count)
    else:
        var = var.mean(axis=pooled, keepdims=True)
    mean = compressed(mean, np.broadcast_to(var, mean.shape)).mean  # means may be per token
    return Moments(mean.reshape((1,) * (rank - mean.ndim) + mean.shape), var, None, None, t,
                   m.rows)


def _lift(a, rank: int) -> np.ndarray:
    a = np.asarray(a)
    return a if a.ndim in (0, rank) else a.reshape((1,) * (rank - a.ndim) + a.shape)


def _without(m: Moments | None) -> Moments | None:
    if m is None or m.tokens is None:
        return m
    return Moments(m.mean, m.var, m.source, m.mixture, None, m.rows)


def _same(x: Moments, out: Moments, shape) -> Moments:
    """``out`` with ``x``'s field unchanged (same token axes, counted from the end)."""
    t = x.tokens
    axes = token_axes(t, len(shape)) if shape is not None else None
    if axes is None or int(np.prod([shape[a] for a in axes])) % (t.n * t.stride):
        return _without(out)
    return attach(out, shape, axes, float(np.mean(x.var)) * t.cov, t.stride)


# ---------------------------------------------------------------------------------------------
# carrying the field through one node


def carry(ctx: RuleContext, inputs: list, outputs: list) -> list:
    """The outputs with the token field each op's transfer gives (module docstring); unchanged
    when no input carries one, or when the rule set the field itself."""
    if not any(m is not None and m.tokens is not None for m in inputs):
        return outputs
    if any(m is not None and m.tokens is not None for m in outputs):
        return outputs
    op = ctx.node.op_type if ctx.node.domain in ("", "ai.onnx") else None
    fn = CARRIERS.get(op) or (_unary if op in UNARY else None)
    if fn is None:
        return [_without(m) for m in outputs]
    try:
        return fn(ctx, inputs, outputs)
    except (ValueError, IndexError):  # a layout the transfer does not follow: drop the field
        return [_without(m) for m in outputs]


def _first(inputs) -> Moments:
    return next(m for m in inputs if m is not None and m.tokens is not None)


@_carrier("Identity", "Dropout", "Cast", "CastLike", "Expand", "Gemm", "MatMul",
          "LpNormalization")
def _unchanged(ctx, inputs, outputs):
    """Ops that leave the token axes in place and map features linearly (or not at all)."""
    x = _first(inputs)
    if ctx.node.op_type in ("MatMul", "Gemm"):
        which = inputs.index(x)
        rank = len(ctx.in_shape(which))
        axes = token_axes(x.tokens, rank)
        contracted = rank - 1 if which == 0 else rank - 2
        if ctx.node.op_type == "Gemm" and ctx.attr("transA" if which == 0 else "transB", 0):
            contracted = 1 - contracted
        if axes is None or contracted in axes or ctx.const(1 - which) is None:
            return [_without(m) for m in outputs]
    return [_same(x, outputs[0], ctx.graph.shape(ctx.node.output[0]))] + [
        _without(m) for m in outputs[1:]]


@_carrier("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(ctx, inputs, outputs):
    """The token digit of the flat index keeps its place: with ``S`` elements between
    consecutive tokens (the axes after the token axes times the stride), the output axes
    covering that digit are the token axes, merged with outer axes such as the batch (index %
    n) and with ``S / (elements after them)`` inner ones (the new stride)."""
    x = inputs[0]
    in_shape, out_shape = ctx.in_shape(0), ctx.out_shape(0)
    axes = token_axes(x.tokens, len(in_shape))
    n = x.tokens.n
    step = int(np.prod(in_shape[axes[-1] + 1:], dtype=np.int64)) * x.tokens.stride
    after = [int(np.prod(out_shape[j + 1:], dtype=np.int64)) for j in range(len(out_shape))]
    j1 = next((j for j in range(len(out_shape)) if after[j] <= step < after[j] * out_shape[j]),
              None)
    if j1 is None or step % after[j1]:
        raise ValueError("the token digit is split between axes")
    stride = step // after[j1]
    acc, j0 = 1, j1
    while True:
        acc *= out_shape[j0]
        if acc >= n * stride or j0 == 0:
            break
        j0 -= 1
    if acc % (n * stride):
        raise ValueError("the token axes are split")
    return [attach(outputs[0], out_shape, list(range(j0, j1 + 1)),
                   float(np.mean(x.var)) * x.tokens.cov, stride)]


@_carrier("Transpose")
def _transpose(ctx, inputs, outputs):
    x = inputs[0]
    rank = len(ctx.in_shape(0))
    perm = list(ctx.attr("perm", list(range(rank))[::-1]))
    new = [perm.index(a) for a in token_axes(x.tokens, rank)]
    if new != list(range(new[0], new[0] + len(new))):
        raise ValueError("the token axes are reordered")
    return [attach(outputs[0], ctx.out_shape(0), new, float(np.mean(x.var)) * x.tokens.cov,
                   x.tokens.stride)]


def _select(ctx, x: Moments, out: Moments, axis: int, index: np.ndarray, out_shape) -> Moments:
    """Tokens ``index`` along the (single, unmerged) token axis ``axis``."""
    rank = len(ctx.in_shape(0))
    axes = token_axes(x.tokens, rank)
    if axis not in axes:
        return _same(x, out, out_shape)
    if len(axes) != 1 or ctx.in_shape(0)[axis] != x.tokens.n or np.ndim(index) != 1:
        return _without(out)
    sig = float(np.mean(x.var)) * x.tokens.cov[np.ix_(index, index)]
    shift = len(out_shape) - rank
    return attach(out, out_shape, [axis + shift], sig)


@_carrier("Slice")
def _slice(ctx, inputs, outputs):
    x, out = inputs[0], outputs[0]
    in_shape = ctx.in_shape(0)
    for axis, start, end, step in _slice_params(ctx, len(in_shape)):
        index = np.arange(in_shape[axis])[slice(start, end, step)]
        out = _select(ctx, x, out, axis, index, ctx.out_shape(0))
        if out.tokens is None:
            break
    return [out]


@_carrier("Gather")
def _gather(ctx, inputs, outputs):
    x = inputs[0]
    index = ctx.const(1)
    if x is None or index is None:
        return [_without(m) for m in outputs]
    rank = len(ctx.in_shape(0))
    axis = ctx.attr("axis", 0) % rank
    index = np.asarray(index, dtype=np.int64) % ctx.in_shape(0)[axis]
    return [_select(ctx, x, outputs[0], axis, index, ctx.out_shape(0))]


@_carrier("Split")
def _split(ctx, inputs, outputs):
    x = inputs[0]
    rank = len(ctx.in_shape(0))
    axis = ctx.attr("axis", 0) % rank
    out, start = [], 0
    for i, m in enumerate(outputs):
        size = ctx.out_shape(i)[axis]
        index = np.arange(start, start + size)
        start += size
        out.append(_select(ctx, x, m, axis, index, ctx.out_shape(i)) if m is not None else m)
    return out


@_carrier("Concat")
def _concat(ctx, inputs, outputs):
    """Along the token axis: independent pieces, block-diagonal covariance; along another
    axis: the pieces' covariances averaged by their sizes."""
    out_shape = ctx.out_shape(0)
    rank = len(out_shape)
    axis = ctx.attr("axis") % rank
    x = _first(inputs)
    axes = token_axes(x.tokens, rank)
    pieces = [m if m is not None else Moments.scalar(0.0, 0.0) for m in inputs]
    shapes = [ctx.in_shape(i) for i in range(len(inputs))]
    if axis in axes:
        if len(axes) != 1 or shapes[inputs.index(x)][axis] != x.tokens.n or x.tokens.stride > 1:
            raise ValueError("concatenation of merged token axes")
        blocks = [sigma(m, s, axes, s[axis]) for m, s in zip(pieces, shapes)]
        sizes = [b.shape[0] for b in blocks]
        sig = np.zeros((sum(sizes), sum(sizes)))
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        for b, o in zip(blocks, offsets):
            sig[o:o + b.shape[0], o:o + b.shape[0]] = b
        return [attach(outputs[0], out_shape, axes, sig)]
    n, stride = x.tokens.n, x.tokens.stride
    weights = np.array([s[axis] for s in shapes], dtype=np.float64)
    sig = sum(w * sigma(m, s, axes, n, stride) for w, m, s in zip(weights, pieces, shapes))
    return [attach(outputs[0], out_shape, axes, sig / weights.sum(), stride)]


# ---------------------------------------------------------------------------------------------
# arithmetic, element-wise functions, normalization, pooling


def _known(ctx: RuleContext, i: int) -> np.ndarray | None:
    return ctx.const(i) if i < len(ctx.node.input) and ctx.node.input[i] else None


@_carrier("Add", "Sub", "Sum", "Mul", "Div", "Pow", "Where")
def _arithmetic(ctx, inputs, outputs):
    op = ctx.node.op_type
    out_shape = ctx.out_shape(0)
    rank = len(out_shape)
    x = _first(inputs)
    axes = token_axes(x.tokens, rank)
    n, stride = x.tokens.n, x.tokens.stride
    signals = [i for i, m in enumerate(inputs) if m is not None]
    if op == "Where":
        return [_same(x, outputs[0], out_shape)]
    if len(signals) == 1:
        if op in ("Add", "Sub"):
            return [_same(x, outputs[0], out_shape)]
        c = _known(ctx, 1 - signals[0])
        if op in ("Mul", "Div") and c is not None and not any(
                np.ndim(c) >= rank - a and np.shape(c)[a - rank] > 1 for a in axes):
            return [_same(x, outputs[0], out_shape)]  # a scale that is the same for every token
        return [_elementwise(ctx, x, outputs[0], out_shape, axes)]
    shapes = [ctx.in_shape(i) for i in signals]
    if any(len(s) != rank for s in shapes):
        raise ValueError("operands of another rank")
    sigs = [sigma(inputs[i], out_shape, axes, n, stride) for i in signals]
    if op in ("Add", "Sub", "Sum"):
        fused = _fused(ctx, outputs[0], out_shape, axes)
        return [fused if fused is not None
                else attach(outputs[0], out_shape, axes, sum(sigs), stride)]
    fused = _fused(ctx, outputs[0], out_shape, axes)
    if fused is not None or op != "Mul":
        return [fused if fused is not None else _without(outputs[0])]
    a, b = (inputs[i] for i in signals)
    mu_a, mu_b = (float(np.mean(np.square(m.mean))) for m in (a, b))
    sig = sigs[0] * sigs[1] + sigs[0] * mu_b + sigs[1] * mu_a
    return [attach(outputs[0], out_shape, axes, sig, stride)]


def _mehler_weights(fn: Callable, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """``a_n = mean_d c_n(d)^2`` for n = 1..8 and, last, the mean remainder (hermite.py)."""
    mean, var = np.ravel(mean), np.ravel(var)
    if mean.size > _MAX_FEATURES:
        pick = np.linspace(0, mean.size - 1, _MAX_FEATURES).astype(np.int64)
        mean, var = mean[pick], var[pick]
    c, remainder = coefficients(fn, mean, var)
    return np.append((c[1:] ** 2).mean(axis=1), remainder.mean())


def _transfer(sig_in: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Mehler: ``Sigma_out = sqrt(p_s p_t) sum_n a_n rho^n``, rho the correlation of
    ``sig_in``, p its per-token profile (relative to its mean)."""
    d = np.sqrt(np.maximum(np.diag(sig_in), 1e-300))
    rho = np.clip(sig_in / np.outer(d, d), -1.0, 1.0)
    scale = np.outer(d, d) / np.mean(d * d)
    out = np.zeros_like(rho)
    power = np.ones_like(rho)
    for coefficient in a:
        power = power * rho
        out += coefficient * power
    return out * scale


def _pooled_features(m: Moments, shape, axes) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (mean, var) of ``m`` with the token axes pooled."""
    mean, var = _grid(m, len(shape))
    keep = tuple(a for a in axes if mean.shape[a] > 1)
    if keep:
        m0 = mean.mean(axis=keep, keepdims=True)
        var = var.mean(axis=keep, keepdims=True) + ((mean - m0) ** 2).mean(axis=keep, keepdims=True)
        mean = m0
    return mean.reshape(-1), np.broadcast_to(var, mean.shape).reshape(-1)


def _elementwise(ctx, x: Moments, out: Moments, out_shape, axes) -> Moments:
    f = elementwise(ctx.node, ctx)
    if f is None:
        return _without(out)
    return _mehler(f.fn, x, out, out_shape, axes)


def _mehler(fn, x: Moments, out: Moments, out_shape, axes) -> Moments:
    mean, var = _pooled_features(x, out_shape, axes)
    a = _mehler_weights(fn, mean, var)
    sig_in = float(np.mean(x.var)) * x.tokens.cov
    return attach(out, out_shape, axes, _transfer(sig_in, a), x.tokens.stride)


def _fused(ctx, out: Moments, out_shape, axes) -> Moments | None:
    """A binary node that is one element-wise function of a common ancestor carrying the
    field (x * Sigmoid(x), GELU written with Erf; ``ctx.fusion``): Mehler over the ancestor."""
    fusion = ctx.fusion
    if fusion is None or fusion.moments.tokens is None:
        return None
    shape = ctx.graph.shape(fusion.tensor)
    if shape is None or len(shape) != len(out_shape):
        return None
    h = fused_function(ctx.node.op_type, fusion.chain_a, fusion.chain_b)
    return _mehler(h.fn, fusion.moments, out, out_shape, axes)


def _unary(ctx, inputs, outputs):
    """An element-wise function of one signal: Mehler."""
    shape = ctx.out_shape(0)
    x = inputs[0]
    return [_elementwise(ctx, x, outputs[0], shape, token_axes(x.tokens, len(shape)))]


@_carrier("LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization")
def _layer_norm(ctx, inputs, outputs):
    """Each token divided by its own scale ``sqrt(D_s)``, ``D_s = spread_s + nu cov[s, s]``
    (spread_s: the spread of its features' means; RMS norms: their mean square):
    ``cov'[s, t] = cov[s, t] / sqrt(D_s D_t)``."""
    x = inputs[0]
    shape = ctx.in_shape(0)
    rank = len(shape)
    axes = token_axes(x.tokens, rank)
    first = ctx.attr("axis", -1) % rank
    if any(a >= first for a in axes):
        return [_without(m) for m in outputs]
    mean, _ = _grid(x, rank)
    features = tuple(range(first, rank))
    if ctx.node.op_type == "LayerNormalization":
        spread = ((mean - mean.mean(axis=features, keepdims=True)) ** 2).mean(axis=features)
    else:
        spread = (mean**2).mean(axis=features)
    other = tuple(a for a in range(first) if a not in axes)
    spread = spread.mean(axis=other) if other else spread
    n, stride = x.tokens.n, x.tokens.stride
    spread = np.broadcast_to(spread, tuple(shape[a] for a in axes)).reshape(-1, n, stride)
    spread = spread.mean(axis=(0, 2))
    nu = float(np.mean(x.var))
    scale = np.sqrt(np.maximum(spread + nu * np.diag(x.tokens.cov), 1e-300))
    sig = nu * x.tokens.cov / np.outer(scale, scale)
    return [attach(outputs[0], shape, axes, sig, stride)] + [_without(m) for m in outputs[1:]]


@_carrier("ReduceMean", "ReduceSum", "GlobalAveragePool")
def _reduce(ctx, inputs, outputs):
    """Means over exactly the token axes: Var_d = nu_d * mean_{s,t} cov (ReduceSum: times
    n^2); over the features only: the field is unchanged; over both: dropped."""
    x = inputs[0]
    shape = ctx.in_shape(0)
    rank = len(shape)
    axes = token_axes(x.tokens, rank)
    if ctx.node.op_type == "GlobalAveragePool":
        reduced = list(range(2, rank))
    elif ctx.opset >= 18 or (ctx.opset >= 13 and ctx.node.op_type == "ReduceSum"):
        value = ctx.const(1) if len(ctx.node.input) > 1 and ctx.node.input[1] else None
        reduced = list(range(rank)) if value is None else [int(a) % rank for a in np.ravel(value)]
    else:
        reduced = [a % rank for a in ctx.attr("axes", list(range(rank)))]
    keep = ctx.node.op_type == "GlobalAveragePool" or bool(ctx.attr("keepdims", 1))
    if not set(reduced) & set(axes):
        return [_same(x, outputs[0], ctx.out_shape(0)) if keep else _without(outputs[0])]
    if sorted(reduced) != axes or x.tokens.n != int(np.prod([shape[a] for a in axes])) or (
            x.tokens.stride > 1):
        return [_without(outputs[0])]
    factor = float(np.mean(x.tokens.cov)) * (x.tokens.n ** 2 if ctx.node.op_type == "ReduceSum" else 1)
    _, var = _grid(x, rank)
    var = var.mean(axis=tuple(axes), keepdims=True) * factor
    if not keep:
        var = var.reshape([var.shape[a] for a in range(rank) if a not in axes])
    return [Moments(outputs[0].mean, var)]


__all__ = ["CARRIERS", "attach", "carry", "profile", "sigma",
           "token_axes"]
