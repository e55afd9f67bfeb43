"""Covariance across tokens (``Moments.tokens``): how each op carries it.

Attention averages values over tokens, so the part of a token's value that other tokens share
passes through the average undiminished while the token-specific part shrinks (ViT: layer 0's
attention adds nearly the same vector to every token; GPT-2: a causal average over the first i
tokens makes token i and j > i share most of their value). The field records, per sequence
tensor, ``Sigma[s, t] = mean_d Cov(x[s, d], x[t, d])`` as ``nu_d * cov[s, t]`` (moments.Tokens,
token_field.py): one token-by-token covariance shared by the features, scaled by each feature's
variance.
Attention creates it (attention.py: P V and Q K^T), and so does a sequence written one step at
a time from jointly drawn steps (token_scatter.py: RWKV's WKV scan) and a position table added to
the tokens (position_table_field.py: its rows' centred Gram); Softmax reads it
(softmax.py), so do the sum of a sequence and its shifted copy (shifted_sum.py: a token-shift
mix) and the joint draws' leaves (token_draws.py); and
:func:`carry`, called by the propagation after every rule, maps it through the other ops:

* layout ops (Reshape, Transpose, Squeeze, Unsqueeze, Flatten, Split, Slice, Gather, Concat,
  Expand) follow the token axes; selecting tokens selects rows and columns of ``cov``;
  concatenating tokens stacks the blocks (independent pieces): :mod:`.token_layout`;
* linear maps over features (Gemm, MatMul with a constant, per-feature scales, biases,
  ReduceMean over features) leave ``cov`` unchanged: ``Cov(W x_s, W x_t)_j = sum_i W_ji^2
  nu_i cov[s, t]``;
* a constant scale that differs from token to token (a rotary embedding's cos and sin):
  ``Sigma_x[s, t] K[s, t]``, ``K`` the scales' feature-weighted products (:mod:`.token_scale`);
* sums of signals (residual Add) add their covariances (independent operands):
  ``Sigma = Sigma_a + Sigma_b`` (a signal without the field: ``diag`` of its per-token
  variance);
* an element-wise function f of a Gaussian with token correlation ``rho[s, t]`` has
  ``Cov(f(z_s), f(z_t)) = sum_n a_n rho^n`` with ``a_n = mean_d c_n(d)^2`` (Mehler's
  formula, hermite.py: orders 1-8, the rest of the variance put on order 9); products of two signals fused into one function of a common ancestor likewise;
  independent products ``Cov = Sigma_a Sigma_b + Sigma_a mu_b^2 + Sigma_b mu_a^2``;
* LayerNormalization over the features divides each token by its own scale: ``cov`` becomes
  the correlation (the per-token variance profile is removed);
* BatchNormalization (batch statistics) over tokens that are not its channels (``[N*T, F]``
  rows of a flattened sequence) subtracts the batch mean: :mod:`.token_batch_norm`;
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

import numpy as np

from ..moments import Moments
from ..strict import fall_back
from .context import RuleContext, RuleError
from .elementwise import UNARY, elementwise
from .fusion import fused_function
from .masks import feeds_softmax
from .per_token import with_profile
from . import map_tokens
from . import position_table_field
from . import repeat_tokens
from . import step_maps
from . import token_layout  # noqa: F401 - registers the layout ops' carriers
from . import token_batch_norm  # noqa: F401 - registers BatchNormalization's carrier
from .token_carriers import CARRIERS, carrier, first_with_field
from .token_scale import scaled_field
from .row_norm import row_scale
from .unit_rows import is_unit_rows
from .token_field import (
    attach,
    grid,
    inner_blocks,
    is_correlation,
    mehler_weights,
    pooled_features,
    same_field,
    sigma,
    token_axes,
    transfer,
    without,
)

# ops whose rule may hand on its input's field unchanged although the op selects tokens
_RESELECTED = ("Slice", "Pad")


# ---------------------------------------------------------------------------------------------
# carrying the field through one node


def carry(ctx: RuleContext, inputs: list, outputs: list, per_token: bool = False) -> list:
    """The outputs with the token field each op's transfer gives (module docstring); unchanged
    when no input carries one, or when the rule set the field itself. ``per_token``: the rule
    saw per-token inputs (:func:`.per_token.per_token_inputs`), so where its output's variance varies
    along the token axes that profile becomes the field's diagonal."""
    op = ctx.node.op_type if ctx.node.domain in ("", "ai.onnx") else None
    if not any(m is not None and m.tokens is not None for m in inputs):
        # a layout stretch from a correlated feature map into a sequence starts the field, and
        # so does a Concat of one map of each step of a correlated sequence
        if op == "Concat":
            return step_maps.entry(ctx, outputs)
        if op in repeat_tokens.REPEATS:  # RepeatVector: copies along a new axis
            return repeat_tokens.entry(ctx, outputs)
        if op in position_table_field.OPS:  # a position embedding added to the tokens
            return position_table_field.entry(ctx, inputs, outputs)
        return map_tokens.entry(ctx, outputs) if op in map_tokens.LAYOUT_OPS else outputs
    if op in map_tokens.LAYOUT_OPS and _folded(inputs, outputs):
        return outputs  # the map's correlation holds what the field said
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
    except (RuleError, ValueError, IndexError) as exc:
        fall_back(exc, (RuleError,))  # a layout the transfer does not follow: drop the field
        return [without(m) for m in outputs]


def _kept_per_element(out: Moments, c, axes, rank: int) -> bool:
    """The rule kept ``x * c`` per element along an axis other than the token axes (and the
    batch) that c varies along (a causal mask of logits, ``masks.logit_offset``): the field's
    per-token profile would pool it."""
    var = np.asarray(out.var)
    return var.ndim == rank and any(
        a != 0 and a not in axes and np.ndim(c) >= rank - a and np.shape(c)[a - rank] > 1
        and var.shape[a] > 1 for a in range(rank))


def _folded(inputs: list, outputs: list) -> bool:
    """The rule put a sequence back onto a feature map with a spatial correlation
    (:mod:`.position_floor`, :mod:`.tokens_map`): the output is a map, its input was not."""
    out, x = outputs[0] if outputs else None, inputs[0] if inputs else None
    return (out is not None and out.spatial is not None and out.spatial.corr is not None
            and out.spatial.corr.rho.ndim >= 3 and x is not None and x.spatial is None)


@carrier("Identity", "Dropout", "Cast", "CastLike", "Expand", "Gemm", "MatMul",
          "LpNormalization")
def _unchanged(ctx, inputs, outputs):
    """Ops that leave the token axes in place and map features linearly (or not at all)."""
    x = first_with_field(inputs)
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


# ---------------------------------------------------------------------------------------------
# arithmetic, element-wise functions, normalization, pooling


def _known(ctx: RuleContext, i: int) -> np.ndarray | None:
    return ctx.const(i) if i < len(ctx.node.input) and ctx.node.input[i] else None


@carrier("Add", "Sub", "Sum", "Mul", "Div", "Pow", "Where")
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
    if op == "Div" and inputs[0] is x and is_unit_rows(ctx):
        return [_per_token_scale(x, ctx.in_shape(0), outputs[0], "rms")]
    scaled = row_scale(ctx) if len(signals) == 2 else None
    if scaled is not None and inputs[scaled[0]] is x:
        return [_per_token_scale(x, ctx.in_shape(scaled[0]), outputs[0], "rms", g=scaled[1])]
    if len(signals) == 1:
        if op in ("Add", "Sub"):
            return [same_field(x, outputs[0], out_shape)]
        c = _known(ctx, 1 - signals[0])
        if op in ("Mul", "Div") and c is not None:
            if not any(np.ndim(c) >= rank - a and np.shape(c)[a - rank] > 1 for a in axes):
                return [same_field(x, outputs[0], out_shape)]  # the same scale for every token
            if feeds_softmax(ctx) and _kept_per_element(outputs[0], c, axes, rank):
                return [without(outputs[0])]  # a mask of logits the rule kept per element
            # a scale that differs from token to token (rotary embeddings' cos and sin)
            if op == "Div" and (signals[0] != 0 or np.any(np.asarray(c) == 0)):
                return [without(outputs[0])]
            scale = np.asarray(c, dtype=np.float64)
            return [scaled_field(x, scale if op == "Mul" else 1.0 / scale, outputs[0],
                                 out_shape, axes, stride)]
        return [_elementwise(ctx, x, outputs[0], out_shape, axes)]
    shapes = [ctx.in_shape(i) for i in signals]
    if any(len(s) != rank for s in shapes):
        raise RuleError("operands of another rank")
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


@carrier("LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization")
def _layer_norm(ctx, inputs, outputs):
    """Each token divided by its own scale ``sqrt(D_s)``, ``D_s = spread_s + nu cov[s, s]``
    (spread_s: the spread of its features' means; RMS norms: their mean square):
    ``cov'[s, t] = cov[s, t] / sqrt(D_s D_t)``."""
    x = inputs[0]
    shape = ctx.in_shape(0)
    first = ctx.attr("axis", -1) % len(shape)
    kind = "centred" if ctx.node.op_type == "LayerNormalization" else "rms"
    return [_per_token_scale(x, shape, outputs[0], kind, first)] + [
        without(m) for m in outputs[1:]]


def _per_token_scale(x: Moments, shape, out: Moments, kind: str, first: int = -1,
                     g=None) -> Moments:
    """``cov'[s, t] = cov[s, t] / sqrt(D_s D_t)`` for each token divided by its own scale
    (features from axis ``first`` on; ``kind`` "centred": LayerNorm, "rms": RMS norms and
    rows scaled to unit length, ``rules/unit_rows.py``). ``g``: each token multiplied by
    ``g(D_s)`` of its mean square instead (an RMSNorm written out, ``rules/row_norm.row_scale``:
    ``cov[s, t] g(D_s) g(D_t)``, ``1 / sqrt(D + eps)``: where eps dominates a small row the
    norm is a scale and the per-token profile is kept)."""
    rank = len(shape)
    first %= rank
    axes = token_axes(x.tokens, rank)
    if any(a >= first for a in axes):
        return without(out)
    mean, _ = grid(x, rank)
    features = tuple(range(first, rank))
    if kind == "centred":
        spread = ((mean - mean.mean(axis=features, keepdims=True)) ** 2).mean(axis=features)
    else:
        spread = (mean**2).mean(axis=features)
    other = tuple(a for a in range(first) if a not in axes)
    spread = spread.mean(axis=other) if other else spread
    n, stride = x.tokens.n, x.tokens.stride
    spread = np.broadcast_to(spread, tuple(shape[a] for a in axes)).reshape(-1, n, stride)
    spread = spread.mean(axis=(0, 2))
    sig = sigma(x, shape, axes, n, stride)  # the per-token variance, the field's or x's own
    square = np.maximum(spread + np.diag(sig), 1e-300)
    with np.errstate(all="ignore"):
        factor = 1.0 / np.sqrt(square) if g is None else np.abs(g(square))
    if not np.all(np.isfinite(factor)):
        return without(out)
    sig = sig * np.outer(factor, factor)
    if is_correlation(x.tokens.cov):
        # x kept its per-token variances beside a correlation (a zero-padded window's exact
        # zeros): so does the output, whose rule scaled each token by its own factor
        d = np.diag(sig)
        live = d > 0
        root = np.sqrt(np.where(live, d, 1.0))
        sig = np.where(np.outer(live, live), sig / np.outer(root, root), 0.0) + np.diag(~live)
    return attach(out, shape, axes, sig, stride)


@carrier("ReduceMean", "ReduceSum", "GlobalAveragePool")
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
