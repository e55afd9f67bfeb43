"""A self-attention's output as a linear map of its own token's input, for the covariance of a
residual sum ``h + attention(LN(h))`` (:mod:`.residual_coupling`): ``E[a_t | x_t] ~ x_t B``.

Per head, with ``q = x W_q``, ``k = x W_k``, ``v = x W_v`` of tokens x independent of each
other (covariance ``C`` of a token's features) and logits ``l_s = s q_t . k_s`` (s the scale,
wherever it is applied), the selected value ``o_t = sum_s p_s v_s`` moves with the query: given
q, a key's logit and its value share the token, ``Cov(v_s, l_s | q) = s W_v^T C W_k q``, so
(as in :mod:`.value_selection`, which adds this term's variance)::

    E[o_t | q] - E[v] = s W_v^T C W_k q  E[sum_s p_s z_s] / sigma

with ``z_s`` the logits standardised within the row (``sigma`` their spread given q):
``E[sum p z] / sigma -> 1 - 1/n`` for small logits over n keys, smaller where the softmax
saturates (sampled from the logits' moments row by row, masked keys left out). The query's own
key and value add ``E[p_tt] W_v`` (``1/n``: the token's own value). So, head by head and then
merged as the graph merges the heads (W_v's column of each output feature, :func:`.merged_heads
.merged_heads`)::

    B[:, e] = s lambda W_q,h W_k,h^T C W_v[:, c_e] + E[1/n] W_v[:, c_e]

Measured on Keras encoders (tf2onnx), the cross-covariance ``Cov(x, a) = C B`` predicted this
way correlates 0.86-0.99 with onnxruntime's over its entries (without the query's path: 0.1-0.4).
s is read as ``sqrt(Var(Q K^T) / mean_h tr(C_q,h C_k,h))`` times the constant scalars between
Q K^T and the softmax.
"""

from __future__ import annotations

import numpy as np

from .context import RuleContext
from .head_projections import head_blocks, keys_first, projection
from .logit_path import qk_matmul, softmax_behind
from .merged_heads import merged_heads


_ROWS = 16  # softmax rows sampled
MASK_GAP = 1000.0  # softmax_rows.MASK_GAP (not imported: it reads the fields this feeds)
_DRAWS = 512  # draws per row
_PASS = ("Add", "Sub", "Where", "Cast", "Identity", "Reshape", "Squeeze", "Unsqueeze", "Transpose")


def _path_scale(graph, logits: str, qk_out: str) -> float | None:
    """The product of constant scalar Mul/Div on the way from Q K^T to the logits (masks and
    biases added, and masks of 0 and 1 multiplied, pass), None where that way is not found."""
    scale, name = 1.0, logits
    for _ in range(12):
        if name == qk_out:
            return scale
        node_id = graph.producer.get(name)
        if node_id is None:
            return None
        node = graph.node(node_id)
        signals = [n for n in node.input if n and graph.is_signal(n)]
        if node.op_type in ("Mul", "Div") and len(signals) == 1:
            other = next(n for n in node.input if n != signals[0])
            c = graph.value(other)
            if c is not None and node.op_type == "Mul" and np.all((c == 0) | (c == 1)):
                pass  # a 0/1 mask (tf2onnx's causal SelectV2): the kept logits unscaled
            elif c is None or np.size(c) != 1 or float(np.ravel(c)[0]) == 0:
                return None
            else:
                c = float(np.ravel(c)[0])
                scale *= 1.0 / c if node.op_type == "Div" else c
        elif node.op_type not in _PASS:
            return None
        name = next((n for n in signals if n == qk_out), signals[0] if signals else None)
        if name is None:
            return None
    return None


def slope(mean: np.ndarray, var: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """(``E[sum_s p_s z_s] / sigma``, ``E[1/n]``) over up to ``_ROWS`` rows of logits whose
    last axis is the keys (``mean``, ``var`` [rows, n]); keys below the row's largest mean by
    more than ``MASK_GAP`` (or -inf) are masked."""
    pick = np.unique(np.linspace(0, mean.shape[0] - 1, min(_ROWS, mean.shape[0])).astype(int))
    lam, own = [], []
    for m, v in zip(mean[pick], var[pick]):
        finite = np.isfinite(m)
        if not finite.any():
            continue
        keep = finite & (m >= np.max(m[finite]) - MASK_GAP)
        n = int(keep.sum())
        if n < 1:
            continue
        sigma = float(np.sqrt(max(np.mean(v[keep]), 0.0)))
        own.append(1.0 / n)
        if n < 2:
            lam.append(0.0)
            continue
        if sigma < 1e-6:
            lam.append(1.0 - 1.0 / n)
            continue
        z = rng.standard_normal((_DRAWS, n))
        logit = m[keep] + sigma * z
        p = np.exp(logit - logit.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        lam.append(float(np.mean((p * (z - z.mean(axis=1, keepdims=True))).sum(axis=1))) / sigma)
    if not own:
        return 0.0, 0.0
    return float(np.mean(lam)), float(np.mean(own))


def response(ctx: RuleContext, name: str, cov_of) -> tuple[str, np.ndarray] | None:
    """(x, B [D, E]) with ``E[name_t | x_t] ~ x_t B`` for ``name`` an attention output merged
    over heads whose queries, keys and values are projections of x (module docstring);
    ``cov_of(x)`` x's feature covariance or None (then its variances). None where not one."""
    graph, known = ctx.graph, ctx.known
    found = merged_heads(ctx, name, loose=True)
    if found is None:
        return None
    pv, x, wv, columns, _ = found
    softmax = softmax_behind(graph, pv.input[0])
    qk = qk_matmul(graph, softmax.input[0]) if softmax is not None else None
    if qk is None or softmax.input[0] not in known or qk.output[0] not in known:
        return None
    shape = graph.shape(softmax.input[0])
    first = keys_first(softmax, shape)
    if first is None:
        return None
    q_in, k_in = qk.input[::-1] if first else qk.input  # logits K Q^T: keys on axis -2
    q, k = projection(ctx, q_in), projection(ctx, k_in)
    k_shape, v_shape = graph.shape(k_in), graph.shape(pv.input[1])
    if q is None or k is None or q[0] != x or k[0] != x or not k_shape or not v_shape:
        return None
    d_k = k_shape[-1] if first else k_shape[-2]  # K [.., n, d_k] or K^T [.., d_k, n]
    wq, wk = head_blocks(q[1], d_k), head_blocks(k[1], d_k)
    d_v = v_shape[-1]
    if (wq is None or wk is None or wq.shape != wk.shape or wv.shape[1] != wq.shape[0] * d_v
            or wq.shape[1] != wv.shape[0]):
        return None
    d = wv.shape[0]
    c = cov_of(x)
    if c is None or c.shape != (d, d):
        c = np.diag(known[x].values_along(-1, d)[1])
    ck = c @ wk  # [H, D, d_k]
    trace = float(np.mean([np.sum((wq[h].T @ c @ wq[h]) * (wk[h].T @ ck[h]))
                           for h in range(wq.shape[0])]))
    qk_var = float(known[qk.output[0]].total()[1])
    path = _path_scale(graph, softmax.input[0], qk.output[0])
    if not trace > 0 or not qk_var > 0 or path is None:
        return None
    s = np.sqrt(qk_var / trace) * path
    logits = known[softmax.input[0]]
    try:
        mean, var = (np.broadcast_to(np.asarray(a, np.float64), shape)
                     for a in (logits.mean, logits.var))
    except ValueError:
        return None
    if first:
        mean, var = np.swapaxes(mean, -1, -2), np.swapaxes(var, -1, -2)
    mean, var = mean.reshape(-1, mean.shape[-1]), var.reshape(-1, var.shape[-1])
    lam, own = slope(mean, var, ctx.rng())
    heads = columns // d_v
    b = own * wv[:, columns]
    for h in np.unique(heads):
        picked = heads == h
        b[:, picked] += (s * lam) * (wq[h] @ (ck[h].T @ wv[:, columns[picked]]))
    return (x, b) if np.all(np.isfinite(b)) else None


__all__ = ["response", "slope"]
