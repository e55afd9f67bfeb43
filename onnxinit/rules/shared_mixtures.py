"""Sums of several attentions over the same tokens: the cross-covariance of their mixtures.

Keras' ``Attention()([q, h])`` and ``AdditiveAttention()([q, h])`` (no projections) output
``a_t = sum_u p_tu h_u``: a mixture of h's tokens with the weights P. The binary rule added a
sum of such outputs and h itself (``Add()([h, a, b, c])``) as independent operands (and the
token fields, :mod:`.tokens`, as the sum of their own), but two mixtures of the same tokens
share them:

    Cov(a_t, b_s) = sum_u E[p_tu q_su] nu_h ~ nu_h (Pm Qm^T)_ts,   Cov(h_t, a_s) = nu_h Pm_st

per feature of h (its tokens independent, variance ``nu_h``), the weights' fluctuation taken as
independent of the values, ``Pm = E[P]`` the Softmax's mean (uniform weights: ``nu_h / T`` for
every pair of tokens). Each operand is written, per base tensor h it reaches, as ``A = c I +
M``: h itself ``c = 1``; ``MatMul(Softmax(.), h)`` ``M = Pm``; Add and Sub of such summed
(constant offsets, Identity, Cast and Dropout passed). An Add (Sub) of a and b then gets

    C = nu_h (A B^T + B A^T)          (Sub: -C)

added to its token covariance and ``mean_t C_tt`` to its variance (the field's diagonal is
scaled to the variance the rule gives: a rule may have added a covariance of its own there).
Measured on Keras' three attentions over one Dense output (``attention_layers``, 512 samples):
the sum's off-diagonal token covariance 0.162 per feature, the operands' own fields 0.035, the
cross terms 0.127 (each pair 0.024-0.026 with ``nu_h / T`` = 0.012).

Not taken: a base that both operands hold themselves (a copy of h in each: the other rules), a
base with a token field of its own (its tokens are not independent), and the pair of h with a
self-attention over h (``softmax(h h^T) h``: :mod:`.self_attention_share` measures that
covariance, most of each row's weight being on the row itself).
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from .context import RuleContext
from .row_norm import skip_casts
from .self_attention_share import attended
from .token_field import attach, grid, sigma

MAX_DEPTH = 8  # Add and Sub nodes walked back from an operand
_PASS = frozenset({"Identity", "Cast", "Dropout"})


def _softmax_mean(graph, known, p: str, t: int, s: int) -> np.ndarray | None:
    """``E[P]`` ``[t, s]`` of a Softmax over its last axis (its mean broadcast), else None."""
    p = skip_casts(graph, p)
    node_id = graph.producer.get(p)
    node = graph.node(node_id) if node_id is not None else None
    if node is None or node.op_type != "Softmax" or p not in known:
        return None
    shape = graph.shape(p)
    default = -1 if graph.opset >= 13 else 1  # before opset 13: the coerced 2-D softmax
    axis = next((a.i for a in node.attribute if a.name == "axis"), default)
    if shape is None or len(shape) != 3 or axis % 3 != 2 or tuple(shape[1:]) != (t, s):
        return None
    mean = np.asarray(known[p].mean, dtype=np.float64)
    mean = mean.reshape((1,) * (3 - mean.ndim) + mean.shape) if mean.ndim < 3 else mean
    if mean.ndim != 3 or mean.shape[0] != 1:
        return None
    return np.broadcast_to(mean[0], (t, s)).copy()


def mixtures(graph, known, name: str, depth: int = MAX_DEPTH) -> dict[str, list] | None:
    """``{h: [c, M]}``: ``name`` as ``sum_h (c I + M) h`` over the bases h it mixes (module
    docstring; M None for no mixture); None for a tensor not ``[B, T, D]``."""
    shape = graph.shape(name)
    if shape is None or len(shape) != 3:
        return None
    for _ in range(MAX_DEPTH):
        node_id = graph.producer.get(name)
        node = graph.node(node_id) if node_id is not None else None
        if node is None or node.op_type not in _PASS:
            break
        name = node.input[0]
    if node is not None and node.op_type == "MatMul" and len(node.input) == 2:
        v = skip_casts(graph, node.input[1])
        v_shape = graph.shape(v)
        if v_shape is not None and len(v_shape) == 3 and v_shape[2] == shape[2]:
            m = _softmax_mean(graph, known, node.input[0], shape[1], v_shape[1])
            if m is not None:
                return {v: [0.0, m]}
    if node is not None and node.op_type in ("Add", "Sub") and len(node.input) == 2 and depth:
        signals = [i for i in node.input if not graph.is_constant(i)]
        if len(signals) == 1 and (node.op_type == "Add" or signals[0] == node.input[0]):
            return mixtures(graph, known, signals[0], depth - 1)  # a constant offset
        if len(signals) == 2 and all(graph.shape(i) == shape for i in signals):
            parts = [mixtures(graph, known, i, depth - 1) for i in signals]
            if all(p is not None for p in parts):
                return _merged(*parts, -1.0 if node.op_type == "Sub" else 1.0)
    return {name: [1.0, None]}


def _merged(a: dict, b: dict, sign: float) -> dict:
    out = {k: list(v) for k, v in a.items()}
    for k, (c, m) in b.items():
        mine = out.setdefault(k, [0.0, None])
        mine[0] += sign * c
        if m is not None:
            mine[1] = sign * m if mine[1] is None else mine[1] + sign * m
    return out


def _full(c: float, m: np.ndarray | None, t: int, s: int) -> np.ndarray:
    out = np.zeros((t, s)) if m is None else np.array(m, dtype=np.float64)
    if c:
        out[np.arange(t), np.arange(t)] += c
    return out


def cross_covariance(ctx: RuleContext) -> list[tuple[Moments, np.ndarray]] | None:
    """[(a shared base's moments, its unit cross-covariance ``C / nu`` across tokens, negated
    for a Sub)] of the node's two operands, else None (module docstring)."""
    graph, known, node = ctx.graph, ctx.known, ctx.node
    if node.op_type not in ("Add", "Sub") or len(node.input) != 2 or known is None:
        return None
    a, b = node.input
    if graph.is_constant(a) or graph.is_constant(b) or graph.shape(a) != graph.shape(b):
        return None
    ma, mb = mixtures(graph, known, a), mixtures(graph, known, b)
    if ma is None or mb is None:
        return None
    terms = []
    for v in set(ma) & set(mb):
        (ca, pa), (cb, pb) = ma[v], mb[v]
        if (pa is None and pb is None) or (ca and cb) or v not in known:
            return None  # copies of v itself on both sides: not this module's
        if known[v].tokens is not None:
            return None
        if attended(graph, b) == v:  # v with a self-attention over it: self_attention_share's
            ca = 0.0
        if attended(graph, a) == v:
            cb = 0.0
        t = graph.shape(a)[1]
        s = (pa if pa is not None else pb).shape[1]
        if (ca or cb) and s != t:
            return None
        fa, fb = _full(ca, pa, t, s), _full(cb, pb, t, s)
        unit = fa @ fb.T + fb @ fa.T
        terms.append((known[v], -unit if node.op_type == "Sub" else unit))
    return terms or None


def with_shared_mixtures(inputs, ctx: RuleContext, outputs: list) -> list:
    """``outputs`` of the binary rule with the operands' cross-covariance added to the
    variance and the token field (module docstring); unchanged where it does not apply."""
    if len(outputs) != 1 or outputs[0] is None or sum(m is not None for m in inputs) != 2:
        return outputs
    terms = cross_covariance(ctx)
    if terms is None:
        return outputs
    out, shape = outputs[0], ctx.out_shape(0)
    mean, var = grid(out, 3)
    n = shape[1]
    added = np.zeros((n, n))
    for v, unit in terms:
        _, nu = grid(v, 3)
        if nu.shape[1] != 1:
            return outputs  # a per-token variance of the base: not a shared nu
        var = var + float(np.mean(np.diag(unit))) * nu
        added = added + float(np.mean(nu)) * unit
    if not np.all(var >= 0):
        return outputs
    own = [sigma(m, shape, [1], n) for m in inputs]
    if any(s is None for s in own):
        return outputs
    sig = own[0] + own[1] + added
    d = np.diag(sig).copy()
    if not np.all(d > 0):
        return outputs
    # the covariances across tokens as summed; the variances the rule's own (a rule before
    # may have added the operands' covariance on the diagonal: self_attention_share)
    sig[np.arange(n), np.arange(n)] = d * (float(np.mean(var)) / float(np.mean(d)))
    return [attach(Moments(mean, var), shape, [1], sig)]


__all__ = ["cross_covariance", "mixtures", "with_shared_mixtures"]
