"""The part of attention's query gradient that keys and values from the same tokens add.

``dQ_q = sum_k dS_qk K_k`` with ``dS_qk = P_qk (dP_qk - sum_j P_qj dP_qj)`` and
``dP_qk = a . V_k`` (``a = dO_q``, the gradient of the query's output ``O = P V``). When K and
V are linear maps of the same token x (``K = x W_k``, ``V = x W_v``, per head), ``a . V_k``
and ``K_k`` are correlated through x's random part: ``E[(a . V_j) K_k] = C^T a Tc[j, k]`` with
``C = W_v^T Sigma_x W_k`` and Tc the tokens' correlation. Given a and P the query gradient
then has the mean::

    E[dQ_q | a, P] = (1 - P_q^T Tc P_q) C^T a

coherent over the keys (each key adds ``P_qk C^T a``), which the rule for independent factors
(:mod:`.pairs`) misses: about ``T / H`` of it (T tokens, H features of x; 0.72-0.77x of the
autodiff for the 4-layer BERT's queries without it). Its second moment is added to the pair
of dQ::

    E[|E[dQ_q]|^2] / d_k = E[a^2] mean_heads ||C_h||_F^2 / d_k,
    Sigma_x = diag(Var[x]) (1 - E[P^T Tc P])

times the square of the constant scale between Q K^T and the Softmax; its covariance across
queries is a's (a loss on the mean over tokens gives every query the same a). The means of x
(position embeddings) are not in Sigma_x: the pair carries them (the operands' means). The
maps are read from the graph: K^T and V each a chain of Transpose, Reshape, scaling by a
constant and a constant bias from ``x @ W`` with the same x; the heads' columns of W follow from
carrying the column index through the chain's layout ops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .context import GradContext
from .rows import RowStats
from .tokens import axes_of

PASSING = ("Dropout", "Cast", "Identity")
LAYOUT = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Gather")
MAX_STEPS = 16
MAX_ELEMENTS = 1 << 22  # index arrays carried through a chain's layout ops


@dataclass(frozen=True)
class Chain:
    """``tensor = layout(scale * (source @ weight + bias))``; ``layout`` from ``start`` (the
    MatMul's output) in forward order: ("Transpose", perm), ("Gather", (indices, axis)) or
    ("Reshape", shape) (Reshape, Squeeze, Unsqueeze, Flatten: the output's static shape)."""

    source: str
    weight: np.ndarray  # [H_in, H_out]
    scale: float
    start: str
    layout: tuple


def _scalar(value) -> float | None:
    if value is None or np.size(value) != 1:
        return None
    return float(np.asarray(value, dtype=np.float64).reshape(()))


def _layout_step(graph, node) -> tuple | None:
    """A layout op as a step of :class:`Chain` (``()`` for a pass-through), None if unknown."""
    op = node.op_type
    if op in PASSING:
        return ()
    if op == "Transpose":
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        return None if perm is None else ("Transpose", perm)
    if op == "Gather":
        index = graph.value(node.input[1])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        return None if index is None else ("Gather", (np.asarray(index, np.int64), axis))
    shape = graph.shape(node.output[0])
    return None if shape is None else ("Reshape", tuple(shape))


def linear_chain(graph, name: str) -> Chain | None:
    """The chain that produces ``name`` (see :class:`Chain`), else None."""
    layout, scale = [], 1.0
    for _ in range(MAX_STEPS):
        node_id = graph.producer.get(name)
        if node_id is None:
            return None
        node = graph.node(node_id)
        op, inputs = node.op_type, list(node.input)
        signals = [i for i in inputs if i and graph.is_signal(i)]
        if op in PASSING or op in LAYOUT:
            step = _layout_step(graph, node)
            if step is None:
                return None
            if step:
                layout.append(step)
            name = inputs[0]
            continue
        if len(signals) != 1:
            return None
        other = [graph.value(i) for i in inputs if i and i != signals[0]]
        if op in ("Mul", "Div") and len(other) == 1:
            s = _scalar(other[0])
            if s is None or s == 0:
                return None
            scale *= s if op == "Mul" else 1.0 / s
        elif op in ("Add", "Sub") and len(other) == 1 and other[0] is not None:
            if op == "Sub" and inputs[0] != signals[0]:
                scale = -scale
        elif op == "MatMul" and inputs[0] == signals[0] and len(other) == 1:
            w = other[0]
            if w is None or np.ndim(w) != 2:
                return None
            return Chain(signals[0], np.asarray(w, dtype=np.float64), scale, node.output[0],
                         tuple(reversed(layout)))
        else:
            return None
        name = signals[0]
    return None


def head_columns(graph, chain: Chain, feature_axis: int, token_axis: int,
                 source_tokens: int = -2) -> np.ndarray | None:
    """[L, d]: the columns of ``chain.weight`` at each index L of the leading axes of the
    chain's tensor (its last two axes: features at ``feature_axis``, tokens at
    ``token_axis``), when every token of the matrix takes its feature from the same column
    (``source_tokens``: the token axis of the MatMul's output)."""
    shape = graph.shape(chain.start)
    if shape is None or len(shape) < 2 or int(np.prod(shape)) > MAX_ELEMENTS:
        return None
    axis = source_tokens % len(shape)
    if axis == len(shape) - 1:
        return None
    column = np.broadcast_to(np.arange(shape[-1]), shape)
    token = np.moveaxis(np.broadcast_to(np.arange(shape[axis]), (*shape[:axis], *shape[axis + 1:],
                                                                   shape[axis])), -1, axis)
    for op, arg in chain.layout:
        if op == "Transpose":
            column, token = column.transpose(arg), token.transpose(arg)
        elif op == "Gather":
            column, token = np.take(column, arg[0], arg[1]), np.take(token, arg[0], arg[1])
        else:
            if int(np.prod(arg)) != column.size:
                return None
            column, token = column.reshape(arg), token.reshape(arg)
    if column.ndim < 3:
        column, token = column[None], token[None]
    column = np.moveaxis(column, (feature_axis, token_axis), (-1, -2))
    token = np.moveaxis(token, (feature_axis, token_axis), (-1, -2))
    column = column.reshape(-1, *column.shape[-2:])
    token = token.reshape(-1, *token.shape[-2:])
    if not (column == column[:, :1, :]).all():
        return None
    if not (token == np.arange(token.shape[-2])[:, None]).all():
        return None
    return column[:, 0, :]


def _variance(moments, size: int) -> np.ndarray:
    """x's variance per feature (the last axis), averaged over the other axes."""
    var = np.asarray(moments.var, dtype=np.float64)
    if var.ndim and var.shape[-1] == size:
        return var.reshape(-1, size).mean(axis=0)
    return np.full(size, float(var.mean()))


def kept_share(moments, rows: RowStats) -> float:
    """``1 - E[P^T Tc P]``, Tc x's correlation across the keys (identity without a field)."""
    keys = rows.keys
    t = moments.tokens
    if t is not None and t.span == 1 and t.n == keys and t.stride == 1:
        tc = t.cov
    else:
        tc = np.eye(keys)
    return max(1.0 - float(np.sum(tc * rows.second)), 0.0)


def random_norm(ctx: GradContext, key: str, value: str, rows: RowStats) -> float | None:
    """The random part: mean over heads of ``||C_h||_F^2 / d_k``, ``C = W_v^T Sigma W_k``,
    Sigma x's variance per feature times :func:`kept_share`, for the key operand ``key``
    ([.., d, T], K^T) and the value operand ``value`` ([.., T, d]); None when they are not
    maps of one tensor the chains can follow."""
    graph = ctx.graph
    k, v = linear_chain(graph, key), linear_chain(graph, value)
    if k is None or v is None or k.source != v.source or k.source not in ctx.forward:
        return None
    if k.weight.shape[0] != v.weight.shape[0]:
        return None
    x = ctx.forward[k.source]
    source_shape = graph.shape(k.source)
    axes = axes_of(x.tokens, len(source_shape)) if source_shape is not None else None
    tokens = axes[0] if axes is not None and len(axes) == 1 else -2
    k_cols = head_columns(graph, k, -2, -1, tokens)
    v_cols = head_columns(graph, v, -1, -2, tokens)
    if k_cols is None or v_cols is None or len(k_cols) != len(v_cols):
        return None
    sigma = _variance(x, k.weight.shape[0]) * kept_share(x, rows)
    c = (v.scale * v.weight).T @ (sigma[:, None] * (k.scale * k.weight))
    norms = [float(np.sum(c[np.ix_(vc, kc)] ** 2)) for vc, kc in zip(v_cols, k_cols)]
    return float(np.mean(norms)) / k_cols.shape[1]


def score_scale(graph, scores: str, logits: str) -> float | None:
    """The constant factor from the Q K^T output ``scores`` to the Softmax's ``logits``
    through Mul/Div by scalars (masks and biases added pass), None if not constant."""
    name, scale = scores, 1.0
    for _ in range(MAX_STEPS):
        if name == logits:
            return scale
        uses = graph.consumers.get(name, [])
        if len(uses) != 1:
            return None
        node = graph.node(uses[0][0])
        if node.op_type in ("Mul", "Div"):
            other = [graph.value(i) for i in node.input if i and i != name]
            s = _scalar(other[0]) if len(other) == 1 else None
            if s is None or s == 0:
                return None
            scale *= s if node.op_type == "Mul" else 1.0 / s
        elif node.op_type not in (*PASSING, "Add", "Sub", "Where"):
            return None
        name = node.output[0]
    return None


def value_output(graph, logits: str) -> tuple[str, str] | None:
    """(value operand, output) of the MatMul P V that the Softmax of ``logits`` feeds."""
    uses = graph.consumers.get(logits, [])
    name = None
    for node_id, _ in uses:
        if graph.node(node_id).op_type == "Softmax":
            name = graph.node(node_id).output[0]
    for _ in range(MAX_STEPS):
        if name is None:
            return None
        uses = graph.consumers.get(name, [])
        if len(uses) != 1:
            return None
        node = graph.node(uses[0][0])
        if node.op_type == "MatMul" and uses[0][1] == 0:
            return node.input[1], node.output[0]
        name = node.output[0] if node.op_type in PASSING else None
    return None
