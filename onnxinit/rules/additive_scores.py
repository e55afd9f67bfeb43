"""Additive attention scores (Bahdanau; Keras' ``AdditiveAttention``) and the covariance of one
query's scores across its keys, for the Softmax over the keys.

``s_qk = sum_d w_d f(a_qd + b_kd)``, written as ``ReduceSum(w * f(A + B), axis=-1)`` with A the
queries' projection ``[.., Tq, 1, D]`` and B the keys' ``[.., 1, Tk, D]`` broadcast against each
other (f element-wise: tanh). For keys of independent tokens, two scores of one query share
only their query::

    Cov(s_qk, s_ql) = sum_d w_d^2 Var_a(g_d(a_d)),   g_d(a) = E_b[f(a + b_d)]
    Var(s_qk)       = sum_d w_d^2 Var(f(a_d + b_d))

(the features taken as independent, a_d and b_d Gaussian with their per-feature moments;
Gauss-Hermite nodes over both). The scores carry this as a token field along the keys,
``(1 - rho) I + rho 1 1^T`` with ``rho`` the ratio of the two, and the Softmax takes the part
common to a row out (:func:`.softmax.shared_part`): without it, it read the whole variance as a
spread across the keys (the Keras sweep's ``attention_layers``: the Softmax 2.4x high).

Where the keys are the values themselves (``AdditiveAttention([q, v])``: B an Unsqueeze of P
V's right operand), the values a query selects move with its scores, as for ``Q K^T``
(:mod:`.value_selection`): ``c_d(a) = Cov_b(v_d, s | a) = w_d Cov_b(b_d, f(a_d + b_d))``, so
``R = mean_d E_a[c_d^2] / sigma^2`` with ``sigma^2`` the scores' spread given the query (their
variance less the common part), and ``Var_sel = G R`` with the same gain G.
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from .context import RuleContext
from .elementwise import elementwise
from .token_field import attach

_Z, _W = np.polynomial.hermite_e.hermegauss(24)
_W = _W / _W.sum()


def _producer(ctx: RuleContext, name: str):
    node_id = ctx.graph.producer.get(name)
    return None if node_id is None else (node_id, ctx.graph.node(node_id))


def _weighted(ctx: RuleContext, name: str, d: int):
    """(input of f's node, w [d]) for ``name`` = ``w * f(u)`` or ``f(u)``, else None."""
    found = _producer(ctx, name)
    if found is None:
        return None
    node_id, node = found
    w = np.ones(d)
    if node.op_type == "Mul":
        signals = [n for n in node.input if ctx.graph.is_signal(n)]
        consts = [n for n in node.input if n and not ctx.graph.is_signal(n)]
        value = ctx.graph.value(consts[0]) if len(signals) == 1 and len(consts) == 1 else None
        if value is None or np.size(value) not in (1, d) or (
                np.ndim(value) and any(k != 1 for k in np.shape(value)[:-1])):
            return None
        w = np.broadcast_to(np.asarray(value, np.float64).reshape(-1), (d,))
        found = _producer(ctx, signals[0])
        if found is None:
            return None
        node_id, node = found
    fn = elementwise(node, ctx.for_node(node_id))
    if fn is None or len(node.input) < 1:
        return None
    return node.input[0], fn.fn, w


def _scores(ctx: RuleContext, node):
    """(A, B, f, w) where ``node`` is a ReduceSum over the last axis (keepdims 0) of ``w * f(A
    + B)`` with A one per query (size 1 on axis -2) and B one per key (size 1 on axis -3)."""
    graph, known = ctx.graph, ctx.known
    x = node.input[0] if node.input else None
    shape_x, shape = graph.shape(x) if x else None, graph.shape(node.output[0])
    if known is None or node.op_type != "ReduceSum" or not shape_x or len(shape_x) < 3 or \
            not shape or tuple(shape) != tuple(shape_x[:-1]):
        return None
    d, n = shape_x[-1], shape_x[-2]
    found = _weighted(ctx, x, d)
    summed = _producer(ctx, found[0]) if found is not None else None
    if summed is None or summed[1].op_type != "Add" or n < 2:
        return None
    a, b = summed[1].input[:2]
    sa, sb = graph.shape(a), graph.shape(b)
    if not sa or not sb or len(sa) != len(shape_x) or len(sb) != len(shape_x):
        return None
    if sb[-2] == 1 and sa[-2] == n:
        a, b, sa, sb = b, a, sb, sa
    if sa[-2] != 1 or sb[-2] != n or sb[-3] != 1 or a not in known or b not in known:
        return None  # A: one per query, broadcast over the keys; B: one per key
    return a, b, found[1], found[2]


def _grid(ctx: RuleContext, a: str, b: str, fn, d: int):
    """(f on the nodes [d, a, b], b's nodes less its mean [d, b]), None if not finite."""
    ma, va = ctx.known[a].values_along(-1, d)
    mb, vb = ctx.known[b].values_along(-1, d)
    ya = ma[:, None] + np.sqrt(np.maximum(va, 0.0))[:, None] * _Z  # [d, nodes]
    db = np.sqrt(np.maximum(vb, 0.0))[:, None] * _Z
    with np.errstate(all="ignore"):
        f = np.asarray(fn(ya[:, :, None] + (mb[:, None] + db)[:, None, :]), np.float64)
    return (f, db) if np.all(np.isfinite(f)) else None


def _spread(f: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """(the part of a score common to its query's row, its whole variance)."""
    g = f @ _W  # E_b f(a + b), per a node
    mean = g @ _W
    common = g * g @ _W - mean**2
    total = np.einsum("dab,a,b->d", f * f, _W, _W) - mean**2
    return float(np.sum(w * w * common)), float(np.sum(w * w * total))


def key_field(ctx: RuleContext, out: Moments) -> Moments | None:
    """``out`` (the ReduceSum of the node's input over its last axis, keepdims 0) with the
    token field along its last axis (the keys: module docstring), None where the input is not
    ``w * f(A + B)`` with A per query and B per key."""
    found = _scores(ctx, ctx.node)
    shape = ctx.graph.shape(ctx.node.output[0])
    if found is None:
        return None
    a, b, fn, w = found
    grid = _grid(ctx, a, b, fn, w.size)
    if grid is None:
        return None
    shared, whole = _spread(grid[0], w)
    if not whole > 0:
        return None
    rho = min(max(shared / whole, 0.0), 1.0)
    n = shape[-1]
    return attach(out, shape, [len(shape) - 1], (1.0 - rho) * np.eye(n) + rho)


def additive_ratio(ctx: RuleContext, logits: str, values: str) -> float | None:
    """``R = mean_d E_a[c_d(a)^2] / sigma^2`` for value selection (:mod:`.value_selection`)
    where ``logits`` are additive scores whose keys B are the values themselves (B an
    Unsqueeze of ``values``): ``c_d(a) = Cov_b(v_d, s | a) = w_d Cov_b(b_d, f(a_d + b_d))``,
    sigma^2 the scores' spread given the query (their whole variance less the common part);
    None where not so."""
    node_id = ctx.graph.producer.get(logits)
    found = _scores(ctx, ctx.graph.node(node_id)) if node_id is not None else None
    if found is None:
        return None
    a, b, fn, w = found
    source = _producer(ctx, b)
    if source is None or source[1].op_type != "Unsqueeze" or source[1].input[0] != values:
        return None
    grid = _grid(ctx, a, b, fn, w.size)
    if grid is None:
        return None
    f, db = grid
    shared, whole = _spread(f, w)
    cov = np.einsum("dab,db,b->da", f, db, _W)  # Cov_b(b_d, f(a + b_d)) per a node
    if not whole - shared > 0:
        return None
    return float(np.mean(w * w * (cov * cov @ _W))) / (whole - shared)


__all__ = ["additive_ratio", "key_field"]
