"""The squared length of a dense layer's output read from a LayerNorm: ``Q = ||y||^2``,
``y = W^T z + b``, ``z = g * LN(x) + beta`` (``ReduceSumSquare``, ``ReduceL2``, or ``Pow(y, 2)``
then ``ReduceSum``/``ReduceMean`` over the last axis: CLIP's and SigLIP's embedding norms, a
retrieval head's ``F.normalize``).

The reduce rule sums the squares as independent, and the feature-pair corrections
(:mod:`.feature_pairs`) carry pooled summaries; neither holds the two facts that set ``Var Q``
here: the normalised row has a fixed length (its energy does not vary), and where the row's
mean pattern dominates (a class token: a learnt constant plus a small part that varies) its
fluctuation is orthogonal to that mean. Both are in the ratio of quadratic forms that ``Q`` is.
With ``v = P x`` the centred row (``P = I - 1 1^T / D``; x's features independent, means ``mu``
and variances ``n``, so ``v ~ N(m, C)``, ``m = P mu``, ``C = P diag(n) P``):

    Q = D N / R + 2 sqrt(D) L / sqrt(R) + c^T c,
    N = v^T A v,  L = h^T v,  R = v^T v + D eps,
    A = G W W^T G,  h = G W c,  c = W^T beta + b,  G = diag(g),

and ``(N, L, R)`` are Gaussian quadratic and linear forms with the moments

    E N = tr AC + m^T A m,  E R = tr C + m^T m + D eps,  E L = h^T m,
    Var N = 2 tr (AC)^2 + 4 m^T ACA m,  Var R = 2 tr C^2 + 4 m^T C m,  Var L = h^T C h,
    Cov(N, R) = 2 tr ACC + 4 m^T AC m,  Cov(N, L) = 2 m^T AC h,  Cov(L, R) = 2 m^T C h.

``Var Q`` is the delta method's ``grad^T Sigma grad`` at the means, ``E Q`` its second-order
mean (``f + sum_ij f_ij Sigma_ij / 2``; the derivatives of ``f(N, L, R)`` above). For a class
token this is exactly the first-order law of ``(I - u u^T) C (I - u u^T)`` (u the mean's
direction); for zero-mean rows it is ``2 (tr A^2 - (tr A)^2 / D)`` of a row uniform on the
sphere, to ``O(1/D)``. On HF CLIP (the LayerNorm inputs' measured moments, 256 samples): the
vision embedding's ``Var Q`` 3.37 against 3.46 measured (the independent-squares sum 2.97 with
the exact moments), the text embedding's 34.0 against 29.9 (a Gaussian with the exact
covariance: 93.2). Per row of x's statistics (a token's own means and variances); where the
rows reach the dense layer through a reshape and a Gather of the flattened rows (CLIP's text
token, picked by an ArgMax of the ids) a mixture of the rows by how often each is picked.
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from .context import RuleContext
from .derived_ids import picked_ids
from .scaled_row_square_sum import row_correlation, scaled_ratio_moments, scaled_row_dense
from .table_rows import squared_input
from .token_field import grid, profile_grid

_ROW_OPS = frozenset(("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Gather", "Identity",
                      "Dropout", "Cast"))
MAX_WORK = 5e7  # rows x D^2 multiply-adds, above which the reduce rule's law is kept


def quadratic_ratio_moments(mu: np.ndarray, n: np.ndarray, a: np.ndarray, h: np.ndarray,
                            c2: float, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(E Q, Var Q) per row of ``Q = D N / R + 2 sqrt(D) L / sqrt(R) + c2`` (module
    docstring) for rows ``x ~ N(mu, diag(n))`` (``mu``, ``n`` of shape [rows, D]), ``a`` the
    centred ``P A P`` [D, D], ``h`` the centred ``P h`` [D]."""
    d = mu.shape[1]
    m = mu - mu.mean(axis=1, keepdims=True)
    p_diag = (1.0 - 1.0 / d) ** 2
    am = m @ a  # rows of (P A P m)^T
    a2 = a * a
    # tr of products of P A P, P diag(n) P, with P m = m: in closed form over n
    tr_ac = n @ np.diag(a)
    tr_acac = np.einsum("ri,ij,rj->r", n, a2, n)
    pn = n.sum(axis=1)
    tr_cc = p_diag * (n * n).sum(axis=1) + (pn * pn - (n * n).sum(axis=1)) / d**2
    pa = a * (np.eye(d) - 1.0 / d)  # A_ij P_ij, for tr ACC
    tr_acc = np.einsum("ri,ij,rj->r", n, pa, n)
    e_n = tr_ac + (am * m).sum(axis=1)
    e_r = pn * (1.0 - 1.0 / d) + (m * m).sum(axis=1) + d * eps
    e_l = m @ h
    var_n = 2 * tr_acac + 4 * (am * am * n).sum(axis=1)
    var_r = 2 * tr_cc + 4 * (m * m * n).sum(axis=1)
    cov_nr = 2 * tr_acc + 4 * (am * m * n).sum(axis=1)
    var_l = (h * h * n).sum(axis=1)
    cov_nl = 2 * (am * h * n).sum(axis=1)
    cov_lr = 2 * (m * h * n).sum(axis=1)
    sd = np.sqrt(d)
    f_n = d / e_r
    f_l = 2 * sd / np.sqrt(e_r)
    f_r = -d * e_n / e_r**2 - sd * e_l / e_r**1.5
    var = (f_n**2 * var_n + f_l**2 * var_l + f_r**2 * var_r
           + 2 * (f_n * f_l * cov_nl + f_n * f_r * cov_nr + f_l * f_r * cov_lr))
    f_nr = -d / e_r**2
    f_lr = -sd / e_r**1.5
    f_rr = 2 * d * e_n / e_r**3 + 1.5 * sd * e_l / e_r**2.5
    mean = (d * e_n / e_r + 2 * sd * e_l / np.sqrt(e_r) + c2
            + f_nr * cov_nr + f_lr * cov_lr + 0.5 * f_rr * var_r)
    return mean, np.maximum(var, 0.0)


def _producer(graph, name: str):
    node_id = graph.producer.get(name)
    return graph.node(node_id) if node_id else None


def _dense_of_norm(graph, y: str):
    """(LayerNorm node, W [D, E], bias b [E], row ops between them) when ``y`` is a dense
    layer (MatMul by a constant 2-D weight, a constant bias added or not) of a LayerNorm over
    the last axis, through ops that keep its rows (another node than a LayerNorm in its place:
    the caller checks it); None otherwise."""
    node, b = _producer(graph, y), None
    if node is not None and node.op_type == "Add":
        consts = [i for i in node.input if graph.is_constant(i)]
        if len(consts) != 1:
            return None
        b = graph.value(consts[0])
        node = _producer(graph, next(i for i in node.input if i != consts[0]))
    if node is None or node.op_type != "MatMul" or not graph.is_constant(node.input[1]):
        return None
    w = graph.value(node.input[1])
    if w is None or np.ndim(w) != 2:
        return None
    d, e = w.shape
    if b is not None and np.size(b) not in (1, e):
        return None
    moved, name = [], node.input[0]
    node = _producer(graph, name)
    while node is not None and node.op_type in _ROW_OPS:
        if graph.is_constant(node.input[0]) or (graph.shape(node.output[0]) or [0])[-1] != d:
            return None
        if node.op_type == "Gather" and _axis(node, len(graph.shape(node.input[0]))) == \
                len(graph.shape(node.input[0])) - 1:
            return None
        moved.append(node)
        node = _producer(graph, node.input[0])
    if node is None:
        return None
    b = np.zeros(e) if b is None else np.broadcast_to(np.asarray(b, np.float64).ravel(), (e,))
    if node.op_type != "LayerNormalization":  # rows scaled by their own sum of squares?
        return node, np.asarray(w, np.float64), b, moved
    shape = graph.shape(node.input[0])
    if not shape or _axis(node, len(shape)) != len(shape) - 1 or shape[-1] != d:
        return None
    return node, np.asarray(w, np.float64), b, moved


def _axis(node, rank: int) -> int:
    for a in node.attribute:
        if a.name == "axis":
            return a.i % rank
    return (-1 if node.op_type == "LayerNormalization" else 0) % rank


def _attr_f(node, name: str, default: float) -> float:
    return next((a.f for a in node.attribute if a.name == name), default)


def normalised_square_sum(ctx: RuleContext, axes: tuple[int, ...], rank: int,
                          keepdims: bool) -> Moments | None:
    """The reduce's output (module docstring) when it sums (or averages) the squares of a
    dense layer of a LayerNorm's rows over the last axis (or of rows scaled by their own sum of
    squares: :mod:`.scaled_row_square_sum`); None otherwise."""
    op, graph = ctx.node.op_type, ctx.graph
    if axes != (rank - 1,) or ctx.known is None:
        return None
    if op in ("ReduceSum", "ReduceMean"):
        y = squared_input(graph, ctx.node.input[0])
    elif op in ("ReduceSumSquare", "ReduceL2"):
        y = ctx.node.input[0]
    else:
        return None
    found = _dense_of_norm(graph, y) if y is not None else None
    if found is None:
        return None
    norm, w, b, moved = found
    scaled = None
    if norm.op_type != "LayerNormalization":
        scaled = scaled_row_dense(ctx, norm.output[0])
        if scaled is None:
            return None
    row = norm.input[0] if scaled is None else scaled[0]
    x, shape = ctx.known.get(row), graph.shape(row)
    d, e = w.shape
    if x is None or x.spatial is not None or not shape or shape[-1] != d:
        return None
    g = graph.value(norm.input[1]) if len(norm.input) > 1 and norm.input[1] else None
    beta = graph.value(norm.input[2]) if len(norm.input) > 2 and norm.input[2] else None
    g = np.ones(d) if g is None else np.broadcast_to(np.asarray(g, np.float64).ravel(), (d,))
    beta = np.zeros(d) if beta is None else np.broadcast_to(
        np.asarray(beta, np.float64).ravel(), (d,))
    x = profile_grid(x, shape) or x
    mean, var = grid(x, len(shape))
    grid_shape = mean.shape[:-1]
    mu = np.broadcast_to(mean, grid_shape + (d,)).reshape(-1, d)
    n = np.broadcast_to(var, grid_shape + (d,)).reshape(-1, d)
    if mu.shape[0] * d * d > MAX_WORK or not (np.all(np.isfinite(mu)) and np.all(np.isfinite(n))):
        return None
    if scaled is not None:  # :mod:`.scaled_row_square_sum`
        q_mean, q_var = scaled_ratio_moments(mu, n, w @ w.T, w @ b, float(b @ b), scaled[1],
                                             row_correlation(ctx, row, d, mu.shape[0]))
        return _finish(ctx, q_mean, q_var, e, rank, keepdims, grid_shape, shape, moved)
    p = np.eye(d) - 1.0 / d
    w_g = g[:, None] * w
    c = w.T @ beta + b
    a = p @ (w_g @ w_g.T) @ p
    q_mean, q_var = quadratic_ratio_moments(mu, n, a, p @ (w_g @ c), float(c @ c),
                                            _attr_f(norm, "epsilon", 1e-5))
    return _finish(ctx, q_mean, q_var, e, rank, keepdims, grid_shape, shape, moved)


def _finish(ctx: RuleContext, q_mean, q_var, e: int, rank: int, keepdims: bool, grid_shape,
            shape, moved) -> Moments:
    """The reduce's moments from the squared length's per row (a mean over the E features of
    the dense layer for ReduceMean; a mixture of the rows where they moved on the way)."""
    if ctx.node.op_type == "ReduceMean":
        q_mean, q_var = q_mean / e, q_var / e**2
    out_shape = ctx.out_shape(0)
    if not moved and len(grid_shape) == rank - 1:
        layout = grid_shape + (1,) if keepdims else grid_shape
        if len(layout) == len(out_shape):
            return Moments(q_mean.reshape(layout), q_var.reshape(layout))
    # rows moved, or picked by indices: a mixture of the rows, by how often each is picked
    rows = tuple(shape[:-1])
    q_mean = np.broadcast_to(q_mean.reshape(grid_shape), rows).reshape(-1)
    q_var = np.broadcast_to(q_var.reshape(grid_shape), rows).reshape(-1)
    w = _row_weights(ctx, moved, rows)
    e = float(w @ q_mean)
    return Moments(e, float(w @ (q_var + q_mean * q_mean)) - e * e)


def _row_weights(ctx: RuleContext, moved: list, rows_shape) -> np.ndarray:
    """Each row of the normalised tensor (``rows_shape``, its axes but the last) weighted by
    how often the dense layer reads it: the row indices followed through the ops between them
    (reshapes keep them, a Gather along a row axis picks them: by constant indices, or by
    indices computed from the token ids, :func:`.derived_ids.picked_ids`, each draw once)."""
    total = int(np.prod(rows_shape, dtype=np.int64))
    picks = [np.arange(total).reshape(rows_shape)]
    for node in reversed(moved):
        out_rows = tuple((ctx.graph.shape(node.output[0]) or [])[:-1])
        if node.op_type == "Gather":
            axis = _axis(node, picks[0].ndim + 1)
            size = picks[0].shape[axis]
            if ctx.graph.is_constant(node.input[1]):
                ids = [np.asarray(ctx.graph.value(node.input[1]), np.int64) % size]
            else:
                drawn = picked_ids(ctx, node.input[1], size)
                if drawn is None:
                    return np.full(total, 1.0 / total)
                ids = list(drawn)
            picks = [np.take(p, i, axis=axis) for p in picks for i in ids]
        elif node.op_type in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
            if int(np.prod(out_rows, dtype=np.int64)) != picks[0].size:
                return np.full(total, 1.0 / total)
            picks = [p.reshape(out_rows) for p in picks]
    counts = np.bincount(np.concatenate([p.ravel() for p in picks]), minlength=total)
    return counts / counts.sum()


__all__ = ["normalised_square_sum", "quadratic_ratio_moments"]
