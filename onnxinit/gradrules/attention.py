"""Backward rule of MatMul of two activations (attention's Q K^T and P V): ``Y = A B`` over
the inner dimension K, ``dA = dY B^T`` and ``dB = A^T dY``, with A, B and dY independent.

Each operand's second moments over its last two axes are a short sum of Kronecker products
(:mod:`.pairs`): its covariance along its token axis (``Moments.tokens`` forward,
``Gradient.tokens`` backward) and its means. A sum over tokens then adds coherently where the
terms share a component: the value gradient ``dV = P^T dY`` of a gradient the queries share
(a loss on the mean over the sequence) is ``sum_q P_qk dY_q``, of variance ``E[P]^2 T^2 Var[dY]``
rather than ``T E[P^2] Var[dY]``; the key gradient ``dK = dS^T Q`` likewise over the queries.
The probabilities P from a Softmax over the last axis have ``E[P_qk P_q'k'] = J (x) p p^T +
I (x) (Q - p p^T)`` (rows sum to one, :func:`.pairs.softmax_backward`). The gradient of an
operand carries the token field along the axis its forward tensor has it (the query axis for P)
and, for P, the pair itself on to the Softmax's backward rule (:mod:`.softmax`).

Without that structure (matrices longer than :data:`.pairs.MAX_SIDE`), elements independent::

    E[dA^2] = N E[dY^2] E[B^2],   E[dB^2] = M E[A^2] E[dY^2]

for A ``[..., M, K]`` and B ``[..., K, N]`` (whole-tensor statistics).
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from ..rules.context import RuleError
from . import pairs
from .context import GradContext
from .gradient import Gradient
from .registry import rule
from .tokens import axes_of

PASSING = ("Dropout", "Cast", "Identity")


def _second(ctx: GradContext, index: int) -> float:
    m, v = ctx.x(index).total()
    return v + m * m


def probabilities_of(ctx: GradContext, index: int) -> bool:
    """Input ``index`` is a Softmax over its last axis (through Dropout, Cast, Identity)."""
    graph, name = ctx.graph, ctx.node.input[index]
    for _ in range(4):
        node_id = graph.producer.get(name)
        if node_id is None:
            return False
        node = graph.node(node_id)
        if node.op_type == "Softmax":
            rank = len(graph.shape(name) or ())
            axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
            return rank > 0 and axis % rank == rank - 1 and ctx.opset >= 13
        if node.op_type not in PASSING:
            return False
        name = node.input[0]
    return False


def key_moments(x: Moments, shape) -> tuple[np.ndarray, float]:
    """(per-key mean [K], E[P^2] pooled) of softmax probabilities ``x`` over the last axis."""
    rank = len(shape)
    mean = np.asarray(x.mean, dtype=np.float64)
    mean = mean.reshape((1,) * (rank - mean.ndim) + mean.shape) if mean.ndim < rank else mean
    p = np.broadcast_to(mean, np.broadcast_shapes(mean.shape, (1,) * (rank - 1) + (shape[-1],)))
    p = p.reshape(-1, shape[-1]).mean(axis=0)
    p = np.where(np.isfinite(p), p, 0.0)
    m, v = x.total()
    return p, v + m * m


def _operand(ctx: GradContext, index: int, shape) -> pairs.Operand:
    if index == 0 and probabilities_of(ctx, 0):
        return pairs.probabilities(*key_moments(ctx.x(0), shape), shape[-2])
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
    a, b = _operand(ctx, 0, a_shape), _operand(ctx, 1, b_shape)
    keep = probabilities_of(ctx, 0)
    return [_gradient(pairs.contract_left(y, b), ctx, 0, a_shape, keep),
            _gradient(pairs.contract_right(a, y), ctx, 1, b_shape, False)]
