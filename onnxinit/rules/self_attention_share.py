"""A sum of a self-attention over a sequence V without projections, ``S = softmax(s V V^T) V``
(Keras' ``Attention()([v, v, v])``: the scores are V's Gram matrix, :mod:`.gram`), and a tensor
R that holds V itself (the residual ``v + attention(v)``): their covariance.

The binary rules add two signals as independent. But the Gram matrix's diagonal is each row's
squared norm, ``D nu`` against off-diagonal cells of standard deviation ``sqrt(D) nu``, so the
softmax puts most of each row's weight on the row itself, and its weight grows with that row's
norm: ``S_i = sum_j p_ij V_j`` is mostly ``V_i``. A Keras self-attention of a Dense(64) output
(unscaled scores): ``S`` has V's variance (1.02x), ``v + S`` close to ``2 v`` (the residual
sum was 1.94x low, the LayerNorm's variance statistic after it 9x low).

With ``R = alpha V + (terms independent of S)`` (V reached from R through the sides of Add and
Sub, layout-free ops and scales by constants, ``alpha`` the product of the scales, summed over
the paths)::

    Var(R + S) = Var R + Var S + 2 alpha Cov(V, S)      (Sub: - 2 alpha Cov)

``Cov(V_ik, S_ik) = E[p_ii V_ik^2] + sum_{j != i} E[p_ij V_jk V_ik] - E[S_ik] E[V_ik]``, to first
order ``E[p_ii] nu_k``; the weight's dependence on the row's norm adds ``Cov(p_ii, V_ik^2)``
(12-20% more where ``E[p_ii]`` is 0.1-0.4), and the softmax rule's ``E[p_ii]`` is itself 0.85
where the measured weight is 0.96 (the Keras model above). So the covariance is measured: the
sub-graph from V to S (the Gram matrix, its scale, the softmax, P V) is run on draws of V from
its moments (``skip_share.covariance``: independent rows, pooled over the batch and the
features, kept per token). Not modelled: the covariance of S with R's other terms (another
attention over V, whose own diagonal weight is of order ``1 / T``), and the draws' features are
independent (a V of rank 16 in 64 features, scores times 1/8: 0.18 on the draws, 0.23 on the
model).
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments, compressed
from .context import RuleContext
from .gram import gram_node
from .row_norm import skip_casts
from .skip_share import covariance
from .token_field import grid

MAX_NODES = 16  # nodes walked back from R to V
_PASS = frozenset({"Identity", "Cast", "Dropout"})


def self_attention_sum(inputs, ctx: RuleContext, rank: int) -> Moments | None:
    """Add or Sub of a self-attention ``S`` over V and a tensor holding V (module docstring):
    their sum's moments with the covariance; None otherwise."""
    node, graph = ctx.node, ctx.graph
    if node.op_type not in ("Add", "Sub") or len(inputs) != 2 or any(m is None for m in inputs):
        return None
    names = list(node.input[:2])
    for s, r in ((1, 0), (0, 1)):
        v = attended(graph, names[s])
        if v is None:
            continue
        alpha = _share(graph, names[r], v)
        if not alpha:
            continue
        cov = covariance(ctx, names[s], v)
        if cov is None:
            return None
        (ma, va), (mb, vb) = (grid(m, rank) for m in inputs)
        sign = 1.0 if node.op_type == "Add" else -1.0  # Cov(R, S) = alpha Cov(V, S)
        mean = ma + sign * mb
        var = np.maximum(va + vb + 2.0 * sign * alpha * cov, 0.0)
        mean, var = np.broadcast_arrays(mean, var)
        return compressed(np.array(mean), np.array(var))
    return None


def attended(graph, name: str) -> str | None:
    """V where ``name`` is ``MatMul(Softmax(k Gram(V)), V)`` (the softmax over the keys, its
    logits V V^T scaled by constants, casts anywhere), else None."""
    node_id = graph.producer.get(skip_casts(graph, name))
    if node_id is None or graph.node(node_id).op_type != "MatMul":
        return None
    p, v = graph.node(node_id).input[:2]
    v = skip_casts(graph, v)
    soft_id = graph.producer.get(skip_casts(graph, p))
    if soft_id is None or graph.node(soft_id).op_type != "Softmax":
        return None
    soft = graph.node(soft_id)
    shape = graph.shape(soft.input[0])
    axis = next((a.i for a in soft.attribute if a.name == "axis"), -1)
    if shape is None or axis % len(shape) != len(shape) - 1:
        return None
    logits = skip_casts(graph, soft.input[0])
    for _ in range(4):  # a scale by a constant (use_scale, 1 / sqrt(D))
        scale_id = graph.producer.get(logits)
        scale = graph.node(scale_id) if scale_id is not None else None
        if scale is None or scale.op_type not in ("Mul", "Div"):
            break
        signals = [i for i in scale.input if i and not graph.is_constant(i)]
        if len(signals) != 1 or (scale.op_type == "Div" and scale.input[0] != signals[0]):
            return None
        logits = skip_casts(graph, signals[0])
    gram_id = graph.producer.get(logits)
    gram = graph.node(gram_id) if gram_id is not None else None
    if gram is None or gram.op_type != "MatMul" or not gram_node(graph, gram):
        return None
    return v if skip_casts(graph, gram.input[0]) == v else None


def _share(graph, name: str, target: str) -> float:
    """``alpha``: the sum over the paths from ``name`` back to ``target`` through the sides of
    Add and Sub (minus for Sub's second), Identity, Cast, Dropout and Mul or Div by a constant
    scalar, of the product of the scales along each (0 where none reaches it)."""
    total, pending, visited = 0.0, [(name, 1.0)], 0
    while pending and visited < MAX_NODES:
        tensor, scale = pending.pop()
        if tensor == target:
            total += scale
            continue
        node_id = graph.producer.get(tensor)
        if node_id is None:
            continue
        visited += 1
        node = graph.node(node_id)
        op, ins = node.op_type, [i for i in node.input if i]
        if op in ("Add", "Sub"):
            for k, i in enumerate(ins[:2]):
                if graph.is_signal(i):
                    pending.append((i, -scale if op == "Sub" and k == 1 else scale))
        elif op in _PASS and ins:
            pending.append((ins[0], scale))
        elif op in ("Mul", "Div"):
            signals = [i for i in ins if graph.is_signal(i)]
            other = [i for i in ins if i not in signals]
            value = graph.value(other[0]) if len(signals) == 1 and len(other) == 1 else None
            if value is None or np.size(value) != 1 or (op == "Div" and ins[0] != signals[0]):
                continue
            c = float(np.ravel(value)[0])
            if op == "Div" and c == 0:
                continue
            pending.append((signals[0], scale * (c if op == "Mul" else 1.0 / c)))
    return total
