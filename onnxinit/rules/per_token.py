"""Per-token variances for the non-linear point-wise rules (the why: tokens.py's docstring).

After a causal attention the token field's diagonal (the per-token variance profile ``p_t``)
is far from flat while the moments hold the variance pooled over the tokens. The propagation
hands a non-linear point-wise rule each input whose profile spreads (token_field.per_token)
spelled out per token, ``Var[x_td] = nu_d p_t`` (:func:`per_token_inputs`; a fused common
ancestor likewise, :func:`per_token_fusion`); ``tokens.carry`` then makes the rule's per-token
output variance the output field's diagonal (:func:`with_profile`). A norm of each token's
features whose input has means that differ from token to token (a class token) gets its input
spelled out likewise, so that each token's mean is divided by its own scale
(:func:`_row_norm_input`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..moments import Moments
from .context import RuleContext, RuleError
from .elementwise import UNARY
from .token_field import POWER_UNEVEN, attach, profile, profile_grid, reprofiled, token_axes

# point-wise ops that are linear in their one signal: per-token variances change nothing
_LINEAR = frozenset(("Identity", "Dropout", "Cast", "CastLike", "Neg"))
_AVERAGES = frozenset(("ReduceMean", "ReduceSum"))
# norms over the trailing axes from ``axis`` on: each token's row divided by its own scale
_ROW_NORMS = frozenset(("LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization"))


def _is_power(ctx: RuleContext) -> bool:
    """A power of one signal, ``Pow(x, c)`` or ``x * x``, that a ReduceMean or ReduceSum reads
    (a norm's mean square): its mean follows each token's variance, which the mean over the
    features keeps (token_field.POWER_UNEVEN). Elsewhere (GELU's ``x^3``) that is second order."""
    node, graph = ctx.node, ctx.graph
    if not (node.op_type == "Pow" or (node.op_type == "Mul" and len(node.input) == 2
                                      and node.input[0] == node.input[1])):
        return False
    return any(graph.node(reader).op_type in _AVERAGES
               for reader, _ in graph.consumers.get(node.output[0], ()))


def per_token_inputs(ctx: RuleContext, inputs: list) -> list | None:
    """The inputs of a non-linear point-wise node (an element-wise function of one signal, Pow,
    a product or quotient of two signals, ``c / x``), each whose field says the variance differs
    from token to token spelled out per token (token_field.profile_grid; for a power that a mean
    reads, from a smaller spread: token_field.POWER_UNEVEN); None when the node is not such a
    node or no input needs it."""
    op = ctx.node.op_type if ctx.node.domain in ("", "ai.onnx") else None
    if op in _ROW_NORMS:
        return _row_norm_input(ctx, inputs)
    signals = sum(m is not None for m in inputs)
    if not (op == "Pow" or (op in UNARY and op not in _LINEAR) or (op in ("Mul", "Div") and (
            signals == 2 or (op == "Div" and len(inputs) > 1 and inputs[1] is not None)))):
        return None
    power = _is_power(ctx)
    out, changed = [], False
    for i, m in enumerate(inputs):
        grid_m = None
        if m is not None and m.tokens is not None:
            try:
                grid_m = (profile_grid(m, ctx.in_shape(i), POWER_UNEVEN) if power
                          else profile_grid(m, ctx.in_shape(i)))
            except RuleError:  # no static shape
                grid_m = None
        out.append(m if grid_m is None else grid_m)
        changed |= grid_m is not None
    return out if changed else None


def _row_norm_input(ctx: RuleContext, inputs: list) -> list | None:
    """A norm of each token's features (LayerNormalization, RMS norms over axes that hold no
    token axis) divides token t by ``sqrt(spread_t + v_t + eps)``, ``spread_t`` the spread of
    its features' means and ``v_t`` its own variance: with the variance pooled over the tokens,
    a token whose variance is far from the pool gets another scale for its mean (a class
    token, a constant row plus small attention outputs: its normalised row is nearly the same
    in every sample, a mean the pooled scale shrinks by ``sqrt(v_t / v)``). Its input spelled
    out per token (token_field.profile_grid) when the field's diagonal spreads and the means
    differ from token to token; None otherwise (means the same for every token, a causal
    attention's profile: the pooled scale moves the output by a fraction of a percent there,
    GPT-2's by 0.06%, for a per-token pass through every later rule)."""
    x = inputs[0] if inputs else None
    if x is None or x.tokens is None:
        return None
    try:
        shape = ctx.in_shape(0)
    except RuleError:  # no static shape
        return None
    rank = len(shape)
    first = int(ctx.attr("axis", -1)) % rank if rank else 0
    axes = token_axes(x.tokens, rank)
    if not axes or any(a >= first for a in axes):
        return None
    mean = np.asarray(x.expand_rank(rank).mean)
    if mean.ndim != rank or not any(mean.shape[a] > 1 and np.ptp(mean, axis=a).any()
                                    for a in axes):
        return None
    grid_m = profile_grid(x, shape)
    return None if grid_m is None else [grid_m] + list(inputs[1:])


def per_token_fusion(ctx: RuleContext) -> RuleContext | None:
    """``ctx`` with its fused common ancestor (``x * Sigmoid(x)``, GELU written out, a mean's ``x * x``)
    spelled out per token like :func:`per_token_inputs`' inputs, for the rule; None when it
    needs not be."""
    f = ctx.fusion
    if f is None or f.moments.tokens is None:
        return None
    shape = ctx.graph.shape(f.tensor)
    grid_m = (profile_grid(f.moments, shape, POWER_UNEVEN) if _is_power(ctx)
              else profile_grid(f.moments, shape))
    return None if grid_m is None else replace(ctx, fusion=replace(f, moments=grid_m))


def with_profile(ctx: RuleContext, i: int, raw: Moments | None, out: Moments | None):
    """``out`` (carrying a field) with the field's diagonal the per-token variance of the rule's
    output ``raw`` where that varies along the token axes."""
    if raw is None or out is None or out.tokens is None:
        return out
    t = out.tokens
    shape = ctx.out_shape(i)
    axes = token_axes(t, len(shape))
    var = raw.expand_rank(len(shape)).var
    if axes is None or var.ndim != len(shape) or not any(var.shape[a] > 1 for a in axes):
        return out
    p = profile(raw, shape, axes, t.n, t.stride)
    return attach(raw, shape, axes, reprofiled(t.cov, p), t.stride)


__all__ = ["per_token_fusion", "per_token_inputs", "with_profile"]
