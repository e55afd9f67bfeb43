"""Covariance across tokens (``Moments.tokens``): how each op carries it.

Attention averages values over tokens, so the part of a token's value that other tokens share
passes through the average undiminished while the token-specific part shrinks (ViT: layer 0's
attention adds nearly the same vector to every token; GPT-2: a causal average over the first i
tokens makes token i and j > i share most of their value). The field records, per sequence
tensor, ``Sigma[s, t] = mean_d Cov(x[s, d], x[t, d])`` as ``nu_d * cov[s, t]`` (moments.Tokens,
token_field.py): one token-by-token covariance shared by the features, scaled by each feature's
variance.
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

Per-token variances: after a causal attention token t averages t values, so the field's
diagonal (the per-token variance profile ``p_t``) is far from flat, while the moments hold the
variance pooled over tokens. A non-linear point-wise node (an element-wise function, Pow, a
product or quotient of two signals: RMSNorm's mean square and its division, GELU, SiLU) gives
``E[f(x)]`` of a mix of variances, not ``f`` at the mean variance, so
:func:`.per_token.per_token_inputs` hands its rule each such input as a Gaussian per token,
``Var[x_td] = nu_d p_t``; the rule's output then varies per token, and :func:`carry` keeps that
profile as the output field's diagonal (correlations from the transfer below) or, where the
field ends (a quotient by a signal), in the moments themselves.

What is not modelled: covariance that differs between features (one ``cov`` per tensor,
variance-weighted), correlation between different features, and dependence of an element-wise
function's Hermite coefficients on the token (computed from each feature's pooled moments).
Any other op drops the field (its absence means independent tokens).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..moments import Moments
from .context import RuleContext
from .elementwise import UNARY, elementwise
from .fusion import fused_function
from .per_token import with_profile
from .shape import slice_params
from .token_field import (
    MAX_EXPANDED,
    attach,
    expanded,
    grid,
    inner_blocks,
    mehler_weights,
    pooled_features,
    reshaped_token_axes,
    same_field,
    sigma,
    token_axes,
    transfer,
    without,
)

CARRIERS: dict[str, Callable] = {}
# ops whose rule may hand on its input's field unchanged although the op selects tokens
_RESELECTED = ("Slice", "Pad")


def _carrier(*ops: str):
    def register(fn):
        for op in ops:
            CARRIERS[op] = fn
        return fn

    return register


# ---------------------------------------------------------------------------------------------
# carrying the field through one node


def carry(ctx: RuleContext, inputs: list, outputs: list, per_token: bool = False) -> list:
    """The outputs with the token field each op's transfer gives (module docstring); unchanged
    when no input carries one, or when the rule set the field itself. ``per_token``: the rule
    saw per-token inputs (:func:`.per_token.per_token_inputs`), so where its output's variance varies
    along the token axes that profile becomes the field's diagonal."""
    if not any(m is not None and m.tokens is not None for m in inputs):
        return outputs
    op = ctx.node.op_type if ctx.node.domain in ("", "ai.onnx") else None
    if op in _RESELECTED:  # the rule passed its input's field on as it was: carried here
        outputs = [without(m) if m is not None and any(
            m.tokens is i.tokens for i in inputs if i is not None) else m for m in outputs]
    if any(m is not None and m.tokens is not None for m in outputs):
        return outputs
    fn = CARRIERS.get(op) or (_unary if op in UNARY else None)
    if fn is None:
        return [without(m) for m in outputs]
    try:
        carried = fn(ctx, inputs, outputs)
        if per_token:
            carried = [with_profile(ctx, i, raw, m)
                       for i, (raw, m) in enumerate(zip(outputs, carried))]
        return carried
    except (ValueError, IndexError):  # a layout the transfer does not follow: drop the field
        return [without(m) for m in outputs]


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
            return [without(m) for m in outputs]
    return [same_field(x, outputs[0], ctx.graph.shape(ctx.node.output[0]))] + [
        without(m) for m in outputs[1:]]


@_carrier("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(ctx, inputs, outputs):
    """The token digit of the flat index keeps its place: with ``S`` elements between
    consecutive tokens (the axes after the token axes times the stride), the output axes
    covering that digit are the token axes, merged with outer axes such as the batch (index %
    n) and with ``S / (elements after them)`` inner ones (the new stride)."""
    x = inputs[0]
    in_shape, out_shape = ctx.in_shape(0), ctx.out_shape(0)
    axes = token_axes(x.tokens, len(in_shape))
    placed = reshaped_token_axes(axes[-1], x.tokens.n, x.tokens.stride, in_shape, out_shape)
    if placed is None:
        raise ValueError("the token digit is split between axes")
    out_axes, stride = placed
    return [attach(outputs[0], out_shape, out_axes, float(np.mean(x.var)) * x.tokens.cov,
                   stride)]


@_carrier("Transpose")
def _transpose(ctx, inputs, outputs):
    """Token axes kept in order: unchanged. Reordered among themselves (a window partition's
    ``[B, nH, ws, nW, ws, C] -> [B, nH, nW, ws, ws, C]``): the token index is permuted. Split
    by the permutation: the field moves to the smallest run of axes that stays together,
    outer axes added (their indices independent groups, :func:`.token_field.expanded`: the
    windows put back on the map) or outer token digits dropped (taken as independent samples,
    :func:`.token_field.inner_blocks`: the tokens of one window)."""
    x = inputs[0]
    shape = ctx.in_shape(0)
    rank = len(shape)
    perm = list(ctx.attr("perm", list(range(rank))[::-1]))
    axes = token_axes(x.tokens, rank)
    new = [perm.index(a) for a in axes]
    if new == list(range(new[0], new[0] + len(new))):
        return [attach(outputs[0], ctx.out_shape(0), new, float(np.mean(x.var)) * x.tokens.cov,
                       x.tokens.stride)]
    t = x.tokens
    first, last = axes[0], axes[-1]
    runs = [axes] + [list(range(r, last + 1)) for r in range(first - 1, -1, -1)]
    runs += [list(range(r, last + 1)) for r in range(first + 1, last + 1)]
    for run in runs:
        images = sorted(perm.index(a) for a in run)
        if images != list(range(images[0], images[0] + len(run))):
            continue
        sizes = [shape[a] for a in run]
        total = int(np.prod(sizes, dtype=np.int64))
        cov = expanded(t, sizes) if run[0] <= first else inner_blocks(t, total)
        if cov is None or total > max(MAX_EXPANDED, t.n):
            continue
        order = [run.index(perm[o]) for o in images]
        index = np.arange(total).reshape(sizes).transpose(order).ravel()
        sig = float(np.mean(x.var)) * cov[np.ix_(index, index)]
        return [attach(outputs[0], ctx.out_shape(0), images, sig)]
    raise ValueError("the token axes are reordered")


def _pick(x: Moments, out: Moments, in_shape, out_shape, picks: dict) -> Moments:
    """Indices ``picks[axis]`` (1-d) along token axes spanning several axes or with a batch
    merged into them: the field spelled out over every index of the token axes, rows and
    columns selected; a variance pooled over the tokens takes the selected tokens' share."""
    rank = len(in_shape)
    axes = token_axes(x.tokens, rank)
    sizes = [in_shape[a] for a in axes]
    cov = expanded(x.tokens, sizes)
    if cov is None or any(np.ndim(i) != 1 for i in picks.values()) or len(out_shape) != rank:
        return without(out)
    cells = np.arange(int(np.prod(sizes, dtype=np.int64))).reshape(sizes)
    for axis, index in picks.items():
        if axis in axes:
            cells = np.take(cells, index, axis=axes.index(axis))
    index = cells.ravel()
    var = np.asarray(out.var)
    pooled = var.ndim < rank or all(var.shape[a] == 1 for a in axes)
    if pooled and index.size < cov.shape[0]:
        share = float(np.mean(np.diag(cov)[index]) / np.mean(np.diag(cov)))
        if np.isfinite(share) and share > 0:
            out = Moments(out.mean, out.var * share, None, None, out.tokens, out.rows)
    return attach(out, out_shape, axes, float(np.mean(x.var)) * cov[np.ix_(index, index)])


def _select(ctx, x: Moments, out: Moments, axis: int, index: np.ndarray, out_shape) -> Moments:
    """Tokens ``index`` along the (single, unmerged) token axis ``axis``."""
    rank = len(ctx.in_shape(0))
    axes = token_axes(x.tokens, rank)
    if axis not in axes:
        return same_field(x, out, out_shape)
    if len(axes) != 1 or ctx.in_shape(0)[axis] != x.tokens.n or np.ndim(index) != 1:
        return without(out)
    cov = x.tokens.cov
    sig = float(np.mean(x.var)) * cov[np.ix_(index, index)]
    shift = len(out_shape) - rank
    var, from_end = np.asarray(out.var), axis + shift - len(out_shape)
    pooled = var.ndim < -from_end or var.shape[from_end] == 1
    if pooled and len(index) < cov.shape[0]:
        # the variance was pooled over every token (its per-token profile is the field's
        # diagonal): the selected tokens have their own share (an RNN's last step after a
        # zero initial state: more than the average)
        share = float(np.mean(np.diag(cov)[index]) / np.mean(np.diag(cov)))
        if np.isfinite(share) and share > 0:
            out = Moments(out.mean, out.var * share, None, None, out.tokens, out.rows)
    return attach(out, out_shape, [axis + shift], sig)


@_carrier("Slice")
def _slice(ctx, inputs, outputs):
    x, out = inputs[0], outputs[0]
    in_shape = ctx.in_shape(0)
    axes = token_axes(x.tokens, len(in_shape))
    if len(axes) > 1 or in_shape[axes[0]] != x.tokens.n:
        picks = {axis: np.arange(in_shape[axis])[slice(start, end, step)]
                 for axis, start, end, step in slice_params(ctx, len(in_shape))}
        if not set(picks) & set(axes):
            return [same_field(x, out, ctx.out_shape(0))]
        return [_pick(x, out, in_shape, ctx.out_shape(0), picks)]
    for axis, start, end, step in slice_params(ctx, len(in_shape)):
        index = np.arange(in_shape[axis])[slice(start, end, step)]
        out = _select(ctx, x, out, axis, index, ctx.out_shape(0))
        if out.tokens is None:
            break
    return [out]


@_carrier("Pad")
def _pad(ctx, inputs, outputs):
    """No padding (Swin's pad to a multiple of the window, when there is none): unchanged."""
    pads = ctx.const(1) if ctx.opset >= 11 else np.asarray(ctx.attr("pads", []))
    if pads is None or np.any(np.asarray(pads) != 0):
        return [without(m) for m in outputs]
    return [same_field(inputs[0], outputs[0], ctx.out_shape(0))]


@_carrier("Gather")
def _gather(ctx, inputs, outputs):
    x = inputs[0]
    index = ctx.const(1)
    if x is None or index is None:
        return [without(m) for m in outputs]
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
        rolled = _pieces_of_one(ctx, axis)
        if rolled is not None:
            return [rolled(outputs[0], out_shape)]
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


def _pieces_of_one(ctx, axis: int):
    """A Concat along ``axis`` of step-1 Slices of one tensor X along that axis alone
    (``torch.roll``: ``Concat(X[-s:], X[:-s])``): X's tokens in a new order, not independent
    pieces. Returns a function of (output, shape) giving the output with X's field so moved,
    or None."""
    known = ctx.known
    source, index = None, []
    for name in ctx.node.input:
        node_id = ctx.graph.producer.get(name)
        node = ctx.graph.node(node_id) if node_id is not None else None
        if node is None or node.op_type != "Slice" or known is None:
            return None
        sub = ctx.for_node(node_id)
        if source not in (None, node.input[0]):
            return None
        source = node.input[0]
        shape = sub.in_shape(0)
        params = slice_params(sub, len(shape))
        if len(params) != 1 or params[0][0] != axis or params[0][3] != 1:
            return None
        _, start, end, _ = params[0]
        index.append(np.arange(shape[axis])[slice(start, end)])
    x = known.get(source)
    if x is None or x.tokens is None:
        return None
    shape = ctx.graph.shape(source)
    index = np.concatenate(index)
    if token_axes(x.tokens, len(shape)) is None:
        return None
    return lambda out, out_shape: _pick(x, out, shape, out_shape, {axis: index})


# ---------------------------------------------------------------------------------------------
# arithmetic, element-wise functions, normalization, pooling


def _known(ctx: RuleContext, i: int) -> np.ndarray | None:
    return ctx.const(i) if i < len(ctx.node.input) and ctx.node.input[i] else None


@_carrier("Add", "Sub", "Sum", "Mul", "Div", "Pow", "Where")
def _arithmetic(ctx, inputs, outputs):
    op = ctx.node.op_type
    out_shape = ctx.out_shape(0)
    rank = len(out_shape)
    # the operand whose field has the most tokens (a residual stream over a Swin stage's map;
    # the branch's over one row of windows is spread to it: token_field.sigma)
    x = max((m for m in inputs if m is not None and m.tokens is not None),
            key=lambda m: m.tokens.n)
    axes = token_axes(x.tokens, rank)
    n, stride = x.tokens.n, x.tokens.stride
    signals = [i for i, m in enumerate(inputs) if m is not None]
    if op == "Where":
        return [same_field(x, outputs[0], out_shape)]
    if len(signals) == 1:
        if op in ("Add", "Sub"):
            return [same_field(x, outputs[0], out_shape)]
        c = _known(ctx, 1 - signals[0])
        if op in ("Mul", "Div") and c is not None and not any(
                np.ndim(c) >= rank - a and np.shape(c)[a - rank] > 1 for a in axes):
            return [same_field(x, outputs[0], out_shape)]  # a scale that is the same for every token
        return [_elementwise(ctx, x, outputs[0], out_shape, axes)]
    shapes = [ctx.in_shape(i) for i in signals]
    if any(len(s) != rank for s in shapes):
        raise ValueError("operands of another rank")
    sigs = [_shared(inputs[i], ctx.in_shape(i), axes, n)
            if all(ctx.in_shape(i)[a] == 1 for a in axes) and inputs[i].tokens is None
            else sigma(inputs[i], out_shape, axes, n, stride) for i in signals]
    if op in ("Add", "Sub", "Sum"):
        fused = _fused(ctx, outputs[0], out_shape, axes)
        return [fused if fused is not None
                else attach(outputs[0], out_shape, axes, sum(sigs), stride)]
    fused = _fused(ctx, outputs[0], out_shape, axes)
    if fused is not None or op != "Mul":
        return [fused if fused is not None else without(outputs[0])]
    a, b = (inputs[i] for i in signals)
    mu_a, mu_b = (float(np.mean(np.square(m.mean))) for m in (a, b))
    sig = sigs[0] * sigs[1] + sigs[0] * mu_b + sigs[1] * mu_a
    return [attach(outputs[0], out_shape, axes, sig, stride)]


def _shared(m: Moments, shape, axes, n: int) -> np.ndarray:
    """A signal broadcast along the token axes (a stochastic-depth mask or a gate per sample,
    ``[B, 1, 1, C]``) is the same for every token of a sample: ``Cov(s, t) = Var``."""
    _, var = grid(m, len(shape))
    return float(np.mean(var)) * np.ones((n, n))


def _elementwise(ctx, x: Moments, out: Moments, out_shape, axes) -> Moments:
    f = elementwise(ctx.node, ctx)
    if f is None:
        return without(out)
    return _mehler(f.fn, x, out, out_shape, axes)


def _mehler(fn, x: Moments, out: Moments, out_shape, axes) -> Moments:
    mean, var = pooled_features(x, out_shape, axes)
    a = mehler_weights(fn, mean, var)
    sig_in = float(np.mean(x.var)) * x.tokens.cov
    return attach(out, out_shape, axes, transfer(sig_in, a), x.tokens.stride)


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
        return [without(m) for m in outputs]
    mean, _ = grid(x, rank)
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
    return [attach(outputs[0], shape, axes, sig, stride)] + [without(m) for m in outputs[1:]]


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
        return [same_field(x, outputs[0], ctx.out_shape(0)) if keep else without(outputs[0])]
    reduced = sorted(reduced)
    total = int(np.prod([shape[a] for a in reduced]))
    if reduced == axes[len(axes) - len(reduced):] and reduced != axes:
        # the inner token axes (each window's tokens, the windows merged into an outer axis)
        cov = inner_blocks(x.tokens, total)
        if cov is None:
            return [without(outputs[0])]
        mean_cov = float(np.mean(cov))
    elif reduced == axes and total % x.tokens.n == 0 and x.tokens.stride == 1:
        # groups of n tokens merged into the axes (windows put back on a map) are
        # independent: the mean over all of them is mean(cov) n / total
        mean_cov = float(np.mean(x.tokens.cov)) * x.tokens.n / total
    else:
        return [without(outputs[0])]
    factor = mean_cov * (total ** 2 if ctx.node.op_type == "ReduceSum" else 1)
    _, var = grid(x, rank)
    var = var.mean(axis=tuple(reduced), keepdims=True) * factor
    if not keep:
        var = var.reshape([var.shape[a] for a in range(rank) if a not in reduced])
    return [Moments(outputs[0].mean, var)]


__all__ = ["CARRIERS", "carry"]
