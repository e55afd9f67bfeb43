"""The sum of a sequence and its copy shifted along the tokens: RWKV's token shift,
``y_t = m x_t + (1 - m) x_{t-1}`` (``Pad`` by one token and a crop, or a ``Slice``).

The binary rules add two signals as independent. Here both operands are the same sequence x
(scaled per feature by constants, moved along its token axis), so where x's tokens are
correlated (its token field, ``moments.Tokens``: the residual stream after a WKV layer, lag-1
correlation 0.51) the sum has the cross term. Per feature d, with ``A_d = a_d P_a + b_d P_b``
(``P`` the 0/1 matrix of each operand's token selection: row t picks x's token the operand
holds at t, none where it holds the pad value; ``a_d, b_d`` the constant scales; Sub: ``-b_d``)
and ``Sigma_d[s, t] = sd[s, d] sd[t, d] corr[s, t]`` x's covariance across tokens:

    Cov(y_s[d], y_t[d]) = (A_d Sigma_d A_d^T)[s, t]
    Var y_t[d] = a_d^2 Var x_t + b_d^2 Var x_{t-1} + 2 a_d b_d Cov(x_t, x_{t-1})   (the shift)

The means are the operands' (linear). The output keeps its per-element variances and the
feature-averaged correlation of ``A_d Sigma_d A_d^T`` as its token field. Taken when both
operands reach one tensor with a token field through Mul/Div by constants that do not vary
along the tokens, constant Pads and Slices of the token axis (a negative pad crops), Identity
and Cast; x a sequence ``[..., T, D]`` whose field is on axis -2 alone (stride 1) and whose
statistics do not vary along its other leading axes. Otherwise None (the other rules).
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from .context import RuleContext
from .mixture import lift
from .token_field import attach, grid, token_axes

WALK = 8  # nodes walked back from an operand, at most
PASS = ("Identity", "Cast")


def _scale(graph, node, signal: int, rank: int, axis: int):
    """The constant factor of a Mul (or Div, signal first) as an array at ``rank`` that does
    not vary along the token axis, else None."""
    other = node.input[1 - signal]
    c = graph.value(other)
    if c is None or (node.op_type == "Div" and signal != 0):
        return None
    c = lift(np.asarray(c, dtype=np.float64), rank)
    if c.ndim != rank or c.shape[axis] != 1 or not np.all(np.isfinite(c)):
        return None
    if node.op_type == "Div":
        if np.any(c == 0):
            return None
        c = 1.0 / c
    return c


def _positions(graph, node, index: np.ndarray, axis: int, rank: int) -> np.ndarray | None:
    """The selection ``index`` (output token -> the node's output token, -1: a constant) taken
    through a Pad or Slice of the token axis (input token), None where it moves other axes."""
    shape = graph.shape(node.input[0])
    if shape is None or len(shape) != rank:
        return None
    n = shape[axis]
    if node.op_type == "Pad":
        mode = next((a.s for a in node.attribute if a.name == "mode"), b"constant")
        pads = graph.value(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        if mode != b"constant" or pads is None or graph.opset < 11:
            return None
        pads = np.ravel(pads).astype(np.int64)
        found = graph.value(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        axes = list(range(rank)) if found is None else [int(a) % rank for a in np.ravel(found)]
        if len(pads) != 2 * len(axes):
            return None
        begin = 0
        for a, b, e in zip(axes, pads[:len(axes)], pads[len(axes):]):
            if a != axis and (b != 0 or e != 0):
                return None
            if a == axis:
                begin = int(b)
        source = index - begin
    else:  # Slice
        values = [graph.value(n_) if n_ else None for n_ in list(node.input[1:5]) + [""] * 4][:4]
        starts, ends, axes, steps = values
        if starts is None or ends is None:
            return None
        axes = list(range(np.size(starts))) if axes is None else [int(a) % rank for a in np.ravel(axes)]
        steps = [1] * len(axes) if steps is None else np.ravel(steps).tolist()
        source = index.copy()
        for a, s, e, st in zip(axes, np.ravel(starts), np.ravel(ends), steps):
            start, stop, step = slice(int(s), int(e), int(st)).indices(shape[a])
            if a == axis:
                source = start + step * index
            elif (start, stop, step) != (0, shape[a], 1):
                return None
    return np.where((index >= 0) & (source >= 0) & (source < n), source, -1)


def _reach(graph, tensor: str, known, rank: int, axis: int, size: int) -> dict:
    """{tensor with a token field: (per-feature scale at ``rank``, token selection [size])}
    for the tensors an operand is computed from through the nodes of the module docstring."""
    scale = np.ones((1,) * rank)
    index = np.arange(size)
    found = {}
    for _ in range(WALK):
        m = known.get(tensor)
        if m is not None and m.tokens is not None:
            found[tensor] = (scale, index)
        node_id = graph.producer.get(tensor)
        if node_id is None:
            break
        node = graph.node(node_id)
        if node.domain not in ("", "ai.onnx") or len(node.output) != 1:
            break
        signals = [i for i, n in enumerate(node.input) if n and graph.is_signal(n)]
        if len(signals) != 1:
            break
        op = node.op_type
        if op in ("Mul", "Div"):
            c = _scale(graph, node, signals[0], rank, axis)
            if c is None:
                break
            scale = scale * c
        elif op in ("Pad", "Slice") and signals[0] == 0:
            index = _positions(graph, node, index, axis, rank)
            if index is None:
                break
        elif op not in PASS:
            break
        tensor = node.input[signals[0]]
    return found


def _sequence(m: Moments, shape, axis: int):
    """(mean [T, D], per-element sd [T, D], correlation [T, T]) of x, None when its statistics
    vary along an axis other than the tokens and the features."""
    rank = len(shape)
    t = m.tokens
    if token_axes(t, rank) != [axis] or t.stride != 1 or t.n != shape[axis]:
        return None
    mean, var = grid(m, rank)
    if any(mean.shape[a] > 1 or var.shape[a] > 1 for a in range(rank) if a not in (axis, rank - 1)):
        return None
    mean = np.broadcast_to(mean, mean.shape[:axis] + (shape[axis],) + mean.shape[axis + 1:])
    var = np.broadcast_to(var, mean.shape)
    mean = mean.reshape(shape[axis], -1)
    var = var.reshape(shape[axis], -1)
    d = np.sqrt(np.maximum(np.diag(t.cov), 0.0))
    corr = t.cov / np.outer(np.where(d > 0, d, 1.0), np.where(d > 0, d, 1.0))
    flat = float(np.ptp(np.diag(t.cov))) <= 1e-9 * float(np.max(np.abs(np.diag(t.cov))))
    sd = np.sqrt(var) if flat else np.sqrt(var * (d * d)[:, None])  # covariance: nu_d cov[t, t]
    return mean, sd, corr


def shifted_sum(inputs, ctx: RuleContext) -> Moments | None:
    """Moments of ``a +/- b`` where both are scaled and shifted copies of one sequence with a
    token field (module docstring); None otherwise."""
    op, graph, known = ctx.node.op_type, ctx.graph, ctx.known
    if op not in ("Add", "Sub") or known is None or any(m is None for m in inputs[:2]):
        return None
    shape = graph.shape(ctx.node.output[0])
    if shape is None or len(shape) < 3:
        return None
    rank, axis = len(shape), len(shape) - 2
    if any(graph.shape(n) is None or list(graph.shape(n)) != list(shape) for n in ctx.node.input[:2]):
        return None
    reached = [_reach(graph, n, known, rank, axis, shape[axis]) for n in ctx.node.input[:2]]
    common = [t for t in reached[0] if t in reached[1]]
    if not common:
        return None
    found = [reached[0][common[0]], reached[1][common[0]]]
    if np.array_equal(found[0][1], found[1][1]):
        return None  # the same tokens: an element-wise sum, the fusion's
    x = known[common[0]]
    seq = _sequence(x, shape, axis)
    if seq is None:
        return None
    _, sd, corr = seq
    features = sd.shape[1]
    if shape[-1] != features:
        return None
    n = shape[axis]
    mats = []
    for (scale, index), sign in zip(found, (1.0, -1.0 if op == "Sub" else 1.0)):
        c = np.broadcast_to(scale.reshape(-1), (features,)) * sign if scale.size in (1, features) else None
        if c is None:
            return None
        p = np.zeros((n, n))
        live = index >= 0
        p[np.arange(n)[live], index[live]] = 1.0
        mats.append(c[:, None, None] * p[None])  # [D, T_out, T_x]
    a = mats[0] + mats[1]
    sigma = sd.T[:, :, None] * sd.T[:, None, :] * corr[None]  # [D, T, T]
    cov = np.einsum("dst,dtu,dvu->dsv", a, sigma, a, optimize=True)
    var = np.maximum(np.einsum("dss->ds", cov), 0.0)  # [D, T]
    root = np.sqrt(var)
    live = root > 0
    norm = np.where(live[:, :, None] & live[:, None, :],
                    cov / np.where(live, root, 1.0)[:, :, None] / np.where(live, root, 1.0)[:, None, :], 0.0)
    pairs = np.maximum((live[:, :, None] & live[:, None, :]).sum(axis=0), 1)
    out_corr = norm.sum(axis=0) / pairs
    np.fill_diagonal(out_corr, 1.0)
    ma, mb = (lift(m.mean, rank) for m in inputs[:2])
    mean = ma - mb if op == "Sub" else ma + mb
    layout = [1] * rank
    layout[axis], layout[-1] = n, features
    out = Moments(mean, var.T.reshape(layout))
    return attach(out, shape, [axis], out_corr)
