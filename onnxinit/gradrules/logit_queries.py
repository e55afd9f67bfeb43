"""How much two queries' logits move together at one key, for attention logits ``S = Q K^T``
(through constant scales, biases, masks and reshapes): the queries of one window and head
share the keys, so a component the keys share (their mean direction, the real keys of a
zero-padded window) shifts every query's row alike, and ``dV = P^T dY`` sums rows that are
not independent (Swin V2-T at 64 px, a padded window: measured 0.47 between two queries'
logits at one key).

With Q ``[M, d]`` and K^T ``[d, N]`` independent, each a sum of Kronecker terms plus means
(:func:`.pairs.of_moments`: ``E[Q_qd Q_q'd'] = sum RQ[q, q'] CQ[d, d'] + mean_l muQ_l[q, d]
muQ_l[q', d']``, likewise RK over features, CK over keys), the logits' covariance between
queries q, q' at key k is::

    A_k[q, q'] = sum RQ[q, q'] (<CQ, RK> CK[k, k] + mean_l (muK_l^T CQ muK_l)[k, k])
                 + mean_l (muQ_l RK muQ_l^T)[q, q'] CK[k, k]

with the key matrices first centred over the keys (``H C H``, ``H = I - 1 1^T / N``: a shift
common to the whole row is not seen by the softmax), then averaged over the keys. The
correlation is the mean of A off its diagonal over its mean diagonal, over the queries of
positive weight.
"""

from __future__ import annotations

import numpy as np

from . import pairs

PASSING = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Dropout", "Cast", "Identity")
SCALING = ("Add", "Sub", "Mul", "Div", "Where")


def scores_matmul(graph, name: str):
    """The MatMul of two signals the logits ``name`` come from through constant scalings,
    biases and masks and reshapes, else None."""
    for _ in range(8):
        node_id = graph.producer.get(name)
        if node_id is None:
            return None
        node = graph.node(node_id)
        if node.op_type == "MatMul":
            both = all(graph.is_signal(i) for i in node.input[:2])
            return node if both else None
        if node.op_type in PASSING:
            name = node.input[0]
        elif node.op_type in SCALING:
            signals = [i for i in node.input if i and graph.is_signal(i)]
            if len(signals) != 1:
                return None
            name = signals[0]
        else:
            return None
    return None


def _centred_keys(c: np.ndarray) -> float:
    """Mean over the keys of ``diag(H C H)``."""
    n = c.shape[0]
    col = c.mean(axis=0)
    return float(np.mean(np.diag(c) - 2 * col) + c.mean()) if n > 1 else 0.0


def query_correlation(graph, forward, logits: str, weights=None) -> float:
    """The correlation between two queries' logits at one key (module docstring); 0 when the
    logits do not come from a MatMul of two signals with static shapes."""
    node = scores_matmul(graph, logits)
    if node is None or any(i not in forward for i in node.input[:2]):
        return 0.0
    shape_q, shape_k = graph.shape(node.input[0]), graph.shape(node.input[1])
    if not (pairs.fits(shape_q) and pairs.fits(shape_k)):
        return 0.0
    q = pairs.of_moments(forward[node.input[0]], shape_q)
    k = pairs.of_moments(forward[node.input[1]], shape_k)
    m = shape_q[-2]
    a = np.zeros((m, m))
    for rq, cq in q.terms:
        for rk, ck in k.terms:
            a += rq * float(np.sum(cq * rk)) * _centred_keys(ck)
        for mu in k.means:
            a += rq * _centred_keys(mu.T @ cq @ mu) / len(k.means)
    for mu in q.means:
        for rk, ck in k.terms:
            a += (mu @ rk @ mu.T) * _centred_keys(ck) / len(q.means)
    keep = np.ones(m, bool) if weights is None or len(weights) != m else np.asarray(weights) > 0
    keep &= np.diag(a) > 0
    n = int(keep.sum())
    if n < 2:
        return 0.0
    inner = a[np.ix_(keep, keep)]
    diag = float(np.trace(inner)) / n
    off = (float(inner.sum()) - diag * n) / (n * (n - 1))
    return float(np.clip(off / diag, 0.0, 1.0)) if diag > 0 else 0.0
