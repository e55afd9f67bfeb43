"""An Einsum or MatMul of one signal S by fixed vectors C (a constant), written as an Einsum:
its equation, and the covariance of S's features that it reads.

The Einsum rule takes S's features as independent, ``Var y = sum_k nu_k C_k^2``. The cross terms
``sum_{k != l} Cov(S_k, S_l) C_k C_l`` average out over a random dense layer's weights, but not
over fixed vectors of one sign: Funnel's position table projected by ``uniform(0, 0.1)``
weights reads the sum of the query's features, whose covariance (``W_q^T diag(nu) W_q`` per
head, the weights at hand: ``channel_covariance.row_covariance``) moved it 1.15x and 0.75x
(Funnel's two blocks).
:func:`projection_cross_terms` adds them; :mod:`.fixed_forms` reads the same covariance for
its rows' loadings.
"""

from __future__ import annotations

import numpy as np

from .channel_covariance import row_covariance
from .context import RuleContext
from .einsum_labels import explicit, needs_ranks
from .index_layout import static

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def equation(ctx: RuleContext, node_id: str) -> tuple[list[str], str] | None:
    """The projection's terms and output labels (a MatMul written as an Einsum)."""
    node = ctx.graph.node(node_id)
    if node.op_type == "Einsum":
        eq = str(ctx.for_node(node_id).attr("equation"))
        shapes = [ctx.graph.shape(name) for name in node.input]
        if needs_ranks(eq) and any(shape is None for shape in shapes):
            return None
        eq = explicit(eq, [len(s or ()) for s in shapes])
        if eq is None:
            return None
        lhs, rhs = eq.split("->")
        return lhs.split(","), rhs
    a, b = (ctx.graph.shape(i) for i in node.input[:2])
    if not static(a) or not static(b) or len(a) < 2 or len(b) < 2:
        return None
    if len(a) != len(b) and min(len(a), len(b)) != 2:
        return None
    rank = max(len(a), len(b))
    batch = _LETTERS[:rank - 2]
    ta = (batch[rank - len(a):] if len(a) > 2 else "") + "xy"
    tb = (batch[rank - len(b):] if len(b) > 2 else "") + "yz"
    return [ta, tb], batch + "xz"


def feature_field(ctx: RuleContext, sname: str, term: str, summed: list[str]):
    """S's features' covariance per head ``[H, K, K]`` (H = 1 without heads) and the head's
    label in ``term`` (None), where ``row_covariance`` has a field on the one summed axis."""
    shape = ctx.graph.shape(sname)
    f = row_covariance(ctx, sname) if len(summed) == 1 and static(shape) else None
    if f is None or f.axis != term.index(summed[0]) or f.cov.shape[-1] != shape[f.axis]:
        return None
    if f.head_axis is None:
        return f.cov[None], None
    if f.cov.ndim != 3 or f.cov.shape[0] != shape[f.head_axis]:
        return None
    return f.cov, term[f.head_axis]


def projection_cross_terms(ctx: RuleContext, inputs) -> np.ndarray | float:
    """For an Einsum of one signal S by a constant C summed over S's features: the cross terms
    of S's feature covariance (``row_covariance``, per head), ``sum_{k != l} S_kl C_k C_l``
    per output element (broadcastable to it), which the Einsum rule's independent features
    leave out; 0 without a field. A random dense layer's cross terms average out, but fixed
    vectors of one sign (a position table projected by a positive weight: Funnel's) read the
    sum of the features: 0.62 where 0.54 was measured, 0.54 with them."""
    node = ctx.node
    signals = [i for i, m in enumerate(inputs[:2]) if m is not None]
    if node.op_type != "Einsum" or len(inputs) != 2 or len(signals) != 1:
        return 0.0
    parsed = equation(ctx, ctx.node_id)
    s = signals[0]
    c = ctx.const(1 - s)
    if parsed is None or c is None:
        return 0.0
    terms, rhs = parsed
    ts, tc = terms[s], terms[1 - s]
    summed = sorted((set(ts) | set(tc)) - set(rhs))
    if len(summed) != 1 or summed[0] not in tc or np.ndim(c) != len(tc):
        return 0.0
    found = feature_field(ctx, node.input[s], ts, summed)
    if found is None:
        return 0.0
    cov, head = found
    if head is not None and head not in rhs:
        return 0.0
    k, k2 = summed[0], next(x for x in _LETTERS if x not in ts + tc + rhs)
    off = cov * (1.0 - np.eye(cov.shape[-1]))
    labels = (head or "") + k + k2
    if head is None:
        off = off[0]
    out = [x for x in rhs if x in tc or x == head]
    extra = np.einsum(f"{tc},{labels},{tc.replace(k, k2)}->{''.join(out)}",
                      np.asarray(c, np.float64), off, np.asarray(c, np.float64))
    return extra.reshape([extra.shape[out.index(x)] if x in out else 1 for x in rhs])


__all__ = ["equation", "feature_field", "projection_cross_terms"]
