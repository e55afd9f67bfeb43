"""An attention output merged over heads, found from the tensor back through layout ops to
``P V`` (P a softmax of Q K^T) and from V to its projection ``x @ W_v``, with W_v's column of
every feature (integer labels carried forward through the layout ops), for
:mod:`.mixed_values` and :mod:`.attention_response`."""

from __future__ import annotations

import numpy as np

from .context import RuleContext
from .logit_path import qk_matmul
from .row_field_maps import MAX_WORK
from .token_field import sigma

_LAYOUT = ("Reshape", "Squeeze", "Unsqueeze", "Flatten", "Transpose", "Identity", "Dropout",
           "Cast", "Expand", "Gather", "Split")
_SCALARS = ("Add", "Sub", "Mul", "Div")  # by a constant (a bias, a scale): labels unchanged
_PROBABILITIES = ("Dropout", "Identity", "Cast")
_RESHAPES = ("Reshape", "Unsqueeze", "Squeeze", "Transpose")


def _signal_input(graph, node) -> str | None:
    signals = [n for n in node.input if n and graph.is_signal(n)]
    if node.op_type in _SCALARS:
        return signals[0] if len(signals) == 1 else None
    return node.input[0] if node.input and graph.is_signal(node.input[0]) else None


def _back(graph, name: str, stop):
    """(the tensor where ``stop(node)`` holds, the layout nodes from it to ``name`` in forward
    order, each with the output it leads on by), else None."""
    path = []
    for _ in range(24):
        nid = graph.producer.get(name)
        if nid is None:
            return None
        node = graph.node(nid)
        if stop(node):
            return name, path[::-1]
        if node.op_type not in _LAYOUT + _SCALARS:
            return None
        source = _signal_input(graph, node)
        if source is None:
            return None
        path.append((node, name))
        name = source
    return None


def _static(shape) -> bool:
    return bool(shape) and all(isinstance(k, int) and k > 0 for k in shape)


def _constant_int(graph, name: str):
    value = graph.value(name) if name else None
    return None if value is None else np.asarray(value).astype(np.int64)


def _forward(graph, labels: np.ndarray, path) -> np.ndarray | None:
    """``labels`` carried through the layout nodes of ``path`` (:func:`_back`)."""
    for node, out in path:
        shape = graph.shape(out)
        if not _static(shape):
            return None
        op = node.op_type
        if op == "Transpose":
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            if perm is not None and sorted(perm) != list(range(labels.ndim)):
                return None
            labels = np.transpose(labels, perm)
        elif op == "Gather":
            index = _constant_int(graph, node.input[1])
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if (index is None or not -labels.ndim <= axis < labels.ndim
                    or np.any(np.abs(index + 0.5) > labels.shape[axis])):
                return None
            labels = np.take(labels, index, axis=axis)
        elif op == "Split":
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if not -labels.ndim <= axis < labels.ndim:
                return None
            axis %= labels.ndim
            sizes = _constant_int(graph, node.input[1]) if len(node.input) > 1 else None
            if sizes is None:
                sizes = next((np.asarray(a.ints) for a in node.attribute if a.name == "split"),
                             None)
            outputs = list(node.output)
            if sizes is None:
                sizes = np.full(len(outputs), labels.shape[axis] // len(outputs))
            if len(sizes) != len(outputs) or int(np.sum(sizes)) != labels.shape[axis]:
                return None
            index = outputs.index(out)
            start = int(np.sum(sizes[:index]))
            labels = np.take(labels, np.arange(start, start + int(sizes[index])), axis=axis)
        elif op == "Expand" or op in _SCALARS:
            try:
                labels = np.broadcast_to(labels, shape)
            except ValueError:
                return None
        if labels.size != int(np.prod(shape)):
            return None
        labels = labels.reshape(shape)  # Reshape, Squeeze, Unsqueeze, Flatten; others: a check
    return labels


def _is_projection(graph, node) -> bool:
    w = graph.value(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
    return w is not None and np.ndim(w) == 2 and graph.is_signal(node.input[0])


def _softmax_input(graph, name: str, loose: bool = False) -> bool:
    """``name`` is a Softmax (through Dropout, Identity, Cast) of logits that come from Q K^T
    through the ops value selection reads (:func:`.logit_path.qk_matmul`), no reshape among
    them (not a per-window mask added through a Reshape, Swin's shifted windows: their cropped
    edge windows read 1-2% lower with this covariance); ``loose``: reshapes allowed on both
    sides (tf2onnx's einsum: P unsqueezed and reshaped before P V)."""
    for _ in range(6):
        nid = graph.producer.get(name)
        if nid is None:
            return False
        node = graph.node(nid)
        if node.op_type == "Softmax":
            return qk_matmul(graph, node.input[0], regroup=loose) is not None
        if node.op_type not in _PROBABILITIES + (_RESHAPES if loose else ()):
            return False
        name = node.input[0]
    return False


def merged_heads(ctx: RuleContext, name: str, loose: bool = False):
    """(P V node, x, W_v [D, N], columns, groups) where ``name`` is an attention output merged
    over heads whose values are ``x @ W_v`` (module docstring): ``columns`` [E] W_v's column
    of each feature of ``name``, ``groups`` the head group of each lead index of P V's output;
    else None. ``loose`` as in :func:`_softmax_input`."""
    graph, known = ctx.graph, ctx.known
    shape = graph.shape(name)
    if known is None or name not in known or not shape or len(shape) < 2:
        return None
    found = _back(graph, name, lambda node: node.op_type == "MatMul" and len(node.input) == 2
                  and all(graph.is_signal(i) for i in node.input)
                  and _softmax_input(graph, node.input[0], loose))
    if found is None:
        return None
    pv = graph.node(graph.producer[found[0]])
    values = _back(graph, pv.input[1], lambda node: _is_projection(graph, node))
    if values is None:
        return None
    projection = graph.node(graph.producer[values[0]])
    w = np.asarray(graph.value(projection.input[1]), dtype=np.float64)
    x = projection.input[0]
    e = shape[-1]
    if e * e * w.shape[0] > MAX_WORK or x not in known:
        return None
    start = graph.shape(values[0])
    if not _static(start) or start[-1] != w.shape[1] or not _static(graph.shape(x)):
        return None
    v_labels = _forward(graph, np.broadcast_to(np.arange(w.shape[1], dtype=np.int32), start),
                        values[1])
    if v_labels is None or v_labels.ndim < 2:
        return None
    if not (v_labels == v_labels[..., :1, :]).all():
        return None  # not one column per feature at every key
    o_shape = graph.shape(pv.output[0])
    if not _static(o_shape) or len(o_shape) < 2:
        return None
    lead = tuple(o_shape[:-2])
    try:
        o_labels = np.broadcast_to(v_labels[..., :1, :], lead + (1, o_shape[-1]))
    except ValueError:
        return None
    rows = o_labels.reshape(-1, o_shape[-1])
    keys, groups = np.unique(rows, axis=0, return_inverse=True)
    groups = np.asarray(groups).reshape(-1)
    if len(np.unique(keys)) != keys.size:
        return None  # a column in two heads
    labels = _forward(graph, np.broadcast_to(o_labels, o_shape), found[1])
    if labels is None or labels.shape[-1] != e:
        return None
    flat = labels.reshape(-1, e)
    if not (flat == flat[:1]).all():
        return None
    columns = flat[0]
    if len(np.unique(columns)) != e:
        return None
    return pv, x, w, columns, (keys, groups)


def head_mixing(ctx: RuleContext, pv, groups: np.ndarray) -> np.ndarray | None:
    """``G`` [heads, heads] (module docstring) for the groups of O's lead index."""
    known, graph = ctx.known, ctx.graph
    p_name, v_name = pv.input[0], pv.input[1]
    o_shape, v_shape, p_shape = (graph.shape(n) for n in (pv.output[0], v_name, p_name))
    p, v = known.get(p_name), known.get(v_name)
    if (p is None or v is None or not v_shape or len(v_shape) < 2 or not p_shape
            or len(p_shape) < 2 or not o_shape):
        return None
    rank = len(o_shape)
    full = tuple(o_shape[:-2]) + tuple(p_shape[-2:])
    try:
        mean = np.broadcast_to(p.expand_rank(rank).mean, full).reshape(-1, *full[-2:])
        var = np.broadcast_to(p.expand_rank(rank).var, full).reshape(-1, *full[-2:])
    except ValueError:
        return None
    n = full[-1]
    tok = sigma(v, v_shape, [len(v_shape) - 2], n)
    if tok is None or tok.shape != (n, n) or np.trace(tok) <= 0:
        return None
    cov = tok / (np.trace(tok) / n)
    count = int(groups.max()) + 1
    m = np.stack([mean[groups == g].mean(axis=0) for g in range(count)])  # [H, q, k]
    s = np.stack([var[groups == g].mean(axis=0) for g in range(count)])
    # sum_{q,k,l} m[h,q,k] cov[k,l] m[g,q,l] as two matrix products: numpy's einsum without a
    # contraction order loops over all five indices (Swin-T's 24 heads of 49 tokens: 68 M terms)
    mixing = (m @ cov).reshape(count, -1) @ m.reshape(count, -1).T / m.shape[1]
    mixing[np.diag_indices(count)] += np.einsum("hqk,k->h", s, np.diag(cov)) / m.shape[1]
    return mixing


def value_covariance(ctx: RuleContext, name: str, found, s_x: np.ndarray) -> np.ndarray | None:
    """``Cov(O_c, O_c') = G_hh' S_v[c, c']`` (:mod:`.mixed_values`) for ``name`` found by
    :func:`merged_heads` (``found``), x's covariance ``s_x``; its diagonal ``name``'s own
    per-feature variances."""
    pv, _, w, columns, (keys, groups) = found
    e = columns.size
    head_of = dict(zip(keys.reshape(-1).tolist(), np.repeat(np.arange(len(keys)), keys.shape[1])))
    mixing = head_mixing(ctx, pv, groups)
    if mixing is None:
        return None
    wc = w[:, columns].astype(np.float32)
    s_v = (wc.T @ s_x.astype(np.float32) @ wc).astype(np.float64)
    heads = np.array([head_of[c] for c in columns.tolist()])
    cov = mixing[np.ix_(heads, heads)] * s_v
    cov[np.diag_indices(e)] = ctx.known[name].values_along(-1, e)[1]
    return cov


__all__ = ["head_mixing", "merged_heads", "value_covariance"]
