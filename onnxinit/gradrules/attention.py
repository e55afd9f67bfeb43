"""Backward rule of MatMul of two activations (attention's Q K^T and P V): ``Y = A B`` over
the inner dimension K, ``dA = dY B^T`` and ``dB = A^T dY``, with A, B and dY independent.

Each operand's second moments over its last two axes are a short sum of Kronecker products
(:mod:`.pairs`): its covariance along its token axis (``Moments.tokens`` forward,
``Gradient.tokens`` backward) and its means. A sum over tokens then adds coherently where the
terms share a component: the value gradient ``dV = P^T dY`` of a gradient the queries share
(a loss on the mean over the sequence) is ``sum_q P_qk dY_q``, of variance ``E[P]^2 T^2 Var[dY]``
rather than ``T E[P^2] Var[dY]``; the key gradient ``dK = dS^T Q`` likewise over the queries.
The probabilities P from a Softmax over the last axis have ``E[P_qk P_q'k'] = J (x) p p^T +
I (x) (E[P P^T] - p p^T)`` (rows independent, :func:`.pairs.probabilities`, their statistics
from :mod:`.rows`). The gradient of an
operand carries the token field along the axis its forward tensor has it (the query axis for P)
and, for P, the pair itself on to the Softmax's backward rule (:mod:`.softmax`). P depends on
the Q and K of Q K^T, which makes their gradients larger than for independent factors; that
factor is measured by Monte Carlo (:mod:`.coupling`). K and V maps of the same tokens make
dS and K correlated, and dQ gains a part coherent over the keys (:mod:`.keyvalue`; it needs the
gradient of P V's output, from ``ctx.gradients``).

Without that structure (matrices longer than :data:`.pairs.MAX_SIDE`), elements independent::

    E[dA^2] = N E[dY^2] E[B^2],   E[dB^2] = M E[A^2] E[dY^2]

for A ``[..., M, K]`` and B ``[..., K, N]`` (whole-tensor statistics).
"""

from __future__ import annotations

import numpy as np

from ..rules.attention import last_axis_softmax
from ..rules.context import RuleError
from . import keyvalue, pairs
from .context import GradContext
from .coupling import coupling
from .gradient import Gradient
from .logit_queries import query_correlation
from .rows import logits_of, row_stats, row_variance
from .tokens import axes_of

PASSING = ("Dropout", "Cast", "Identity")


def _second(ctx: GradContext, index: int) -> float:
    m, v = ctx.x(index).total()
    return v + m * m


def softmax_logits(ctx: GradContext, index: int) -> str | None:
    """The logits when input ``index`` is a Softmax over its last axis (through Dropout,
    Cast, Identity), else None."""
    node = last_axis_softmax(ctx.graph, ctx.node.input[index], ctx.opset, PASSING)
    return node.input[0] if node is not None and node.input[0] in ctx.forward else None


def softmax_after(ctx: GradContext) -> str | None:
    """The logits of the Softmax over the last axis this node's output reaches through
    element-wise scalings and masks (Q K^T / sqrt(d) + mask), else None."""
    graph, name = ctx.graph, ctx.node.output[0]
    for _ in range(5):
        uses = graph.consumers.get(name, [])
        if len(uses) != 1:
            return None
        node = graph.node(uses[0][0])
        if node.op_type == "Softmax":
            rank = len(graph.shape(name) or ())
            axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
            last = rank > 0 and axis % rank == rank - 1 and ctx.opset >= 13
            return name if last and name in ctx.forward else None
        if node.op_type not in (*PASSING, "Mul", "Div", "Add", "Sub", "Where"):
            return None
        name = node.output[0]
    return None


def _query_sharing(p: pairs.Pair) -> float:
    """The share of dS's variance the queries have in common (its pair along axis -2)."""
    sig = pairs.along(p, -2)
    n = sig.shape[0]
    diag = float(np.trace(sig)) / n
    off = (float(sig.sum()) - diag * n) / max(n * (n - 1), 1)
    return off / diag if diag > 0 else 0.0


def _operand(ctx: GradContext, index: int, shape, y: pairs.Pair | None = None) -> pairs.Operand:
    """Operand ``index`` of the MatMul; softmax rows weighted by the second moment of dY's
    query (``y``: the rows a zero gradient multiplies do not count)."""
    logits = softmax_logits(ctx, index) if index == 0 else None
    if logits is not None:
        weights = None if y is None else np.diag(pairs.along(y, -2))
        rho = query_correlation(ctx.graph, ctx.forward, logits, weights)
        rows = row_stats(*logits_of(ctx.graph, ctx.forward, logits, shape),
                         query_weights=weights, query_corr=rho)
        return pairs.probabilities(rows, shape[-2])
    return pairs.of_moments(ctx.x(index), shape)


def _gradient(p: pairs.Pair, ctx: GradContext, index: int, shape, keep_pair: bool) -> Gradient:
    """The operand's gradient: its second moment, the token field along the axis its forward
    tensor has it (else the query axis), the pair when asked."""
    rank = len(shape)
    x = ctx.x(index)
    axes = axes_of(x.tokens, rank)
    axis = -1 if axes == [rank - 1] else -2
    tokens = pairs.token_field(p, axis, rank)
    return Gradient(0.0, max(pairs.second(p), 0.0), tokens=tokens,
                    pair=p if keep_pair else None)


def independent(grads, ctx: GradContext, a_shape, b_shape):
    """The rule without correlations (module docstring)."""
    m_rows, n_cols = a_shape[-2], b_shape[-1]
    gm, gv = grads[0].total()
    dy2 = gv + gm * gm
    return [Gradient.scalar(0.0, n_cols * dy2 * _second(ctx, 1)),
            Gradient.scalar(0.0, m_rows * dy2 * _second(ctx, 0))]


def matmul_activations(grads, ctx: GradContext):
    """See the module docstring."""
    if not (ctx.is_signal(0) and ctx.is_signal(1)):
        raise RuleError("MatMul with a constant operand")
    a_shape, b_shape, y_shape = ctx.in_shape(0), ctx.in_shape(1), ctx.out_shape()
    if len(a_shape) < 2 or len(b_shape) < 2:
        raise RuleError("MatMul of vectors")
    if not all(pairs.fits(s) for s in (a_shape, b_shape, y_shape)):
        return independent(grads, ctx, a_shape, b_shape)
    g = grads[0]
    gm, gv = g.total()
    y = g.pair if g.pair is not None else pairs.of_gradient(gv, gm, g.tokens, y_shape)
    a, b = _operand(ctx, 0, a_shape, y), _operand(ctx, 1, b_shape)
    keep = softmax_logits(ctx, 0) is not None
    pa, pb = pairs.contract_left(y, b), pairs.contract_right(a, y)
    logits = softmax_after(ctx)
    if logits is not None:  # Q K^T: the probabilities depend on Q and K (coupling.py)
        within = row_variance(*logits_of(ctx.graph, ctx.forward, logits, y_shape))
        f_q, f_k = coupling(within, y_shape[-1], a_shape[-1], _query_sharing(y))
        pa = pairs.scaled(pa, f_q) + _key_value_term(ctx, logits, a_shape, y_shape)
        pb = pairs.scaled(pb, f_k)
    return [_gradient(pa, ctx, 0, a_shape, keep), _gradient(pb, ctx, 1, b_shape, False)]


def _key_value_term(ctx: GradContext, logits: str, a_shape, y_shape) -> pairs.Pair:
    """The pair term of dQ that keys and values from the same tokens add (:mod:`.keyvalue`);
    empty when the graph does not show it."""
    found = keyvalue.value_output(ctx.graph, logits)
    scale = keyvalue.score_scale(ctx.graph, ctx.node.output[0], logits)
    g = ctx.gradients.get(found[1]) if found is not None else None
    if g is None or scale is None:
        return ()
    out_shape = ctx.graph.shape(found[1])
    if out_shape is None or not pairs.fits(out_shape):
        return ()
    rows = row_stats(*logits_of(ctx.graph, ctx.forward, logits, y_shape))
    norm = keyvalue.random_norm(ctx, ctx.node.input[1], found[0], rows)
    if not norm:
        return ()
    gm, gv = g.total()
    a = g.pair if g.pair is not None else pairs.of_gradient(gv, gm, g.tokens, out_shape)
    return ((scale**2 * norm * pairs.along(a, -2), np.eye(a_shape[-1])),)
