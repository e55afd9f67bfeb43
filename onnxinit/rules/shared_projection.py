"""A product of two linear images of one row, cell by cell: ``y = X * Y`` where ``X = k P_a``,
``Y = k' P_b`` and ``P_a``, ``P_b`` are each either a dense projection ``r @ W`` of one row
``r`` (W a constant matrix) or ``r`` itself, moved by layout ops (Transpose, Unsqueeze,
Reshape, Split, Slice, Gather, Expand, Cast) and multiplied by factors ``k`` (constants or
signals taken as independent of ``r``). Mamba's selective scan: ``dt[d, t] B[t, s] * u[d, t]``
with ``B = u @ W_B`` (the input's projection times the input itself); a bilinear form of one
vector in general.

The moments rules take ``X`` and ``Y`` as independent. They are not: where both read the same
row (the same sample and token), ``c = Cov(P_a[i], P_b[j]) = sum_d W_a[d, i] W_b[d, j] nu_d``
(``nu_d`` the row's variances; ``W = I`` for the row itself: ``c = W_a[j, i] nu_j``), and with
``P_a``, ``P_b`` jointly Gaussian, k independent::

    E[X Y]       = E[k] E[k'] (m_a m_b + c)
    E[X^2 Y^2]   = E[k^2] E[k'^2] (E[P_a^2] E[P_b^2] + 2 c^2 + 4 m_a m_b c)

so the product gains ``E[k] E[k'] c`` in its mean and ``E[k^2] E[k'^2] (2 c^2 + 4 m_a m_b c)``
in its second moment. The covariance is a fixed number per output cell (per (channel, state)
in Mamba): the cells' means are not zero, and a later sum over tokens adds them up coherently
(the scan's state). Each element's source indices are found by running the layout ops on index
arrays; the deltas are folded onto the product's cell grid by the law of total variance.

Left out: the row's features are taken as uncorrelated, the factors ``k`` as independent of
``r`` (Mamba's ``dt`` is a low-rank projection of the same ``u``), and two projections that
:mod:`.shared_row` already describes (element-wise functions of two dense outputs of one row,
whose mean terms average out over the columns) are left to it.
"""

from __future__ import annotations

import numpy as np

from .channel_covariance import row_covariance
from .context import RuleContext
from .fusion import common_ancestor
from .grids import KEEP_CAP, out_rank
from .index_layout import coordinates, grid, move, static
from .mixture import lift
from .row_norm import without_casts

ELEMENT_CAP = 1 << 21  # elements of the product up to which its source indices are computed
MAX_STEPS = 12  # nodes walked back from an operand
_LAYOUT = frozenset({"Cast", "Identity", "Transpose", "Unsqueeze", "Squeeze", "Reshape",
                     "Flatten", "Split", "Slice", "Gather", "Expand"})


def _walk(ctx: RuleContext, name: str, nested: bool = False) -> tuple[list, str | None]:
    """Nodes from ``name`` back to the first dense projection (a MatMul of a signal by a
    constant matrix), nearest first, as (node_id, traced input, output); and the projection's
    output (None when the walk stopped elsewhere: every tensor passed is a candidate row)."""
    graph = ctx.graph
    steps, current = [], name
    for _ in range(MAX_STEPS):
        node_id = graph.producer.get(current)
        if not node_id:
            return steps, None
        node = graph.node(node_id)
        nctx = ctx.for_node(node_id)
        op = node.op_type
        if op == "MatMul" and len(node.input) == 2:
            w = nctx.const(1)
            if w is not None and np.ndim(w) == 2 and graph.is_signal(node.input[0]):
                return steps, current
            return steps, None
        if op in _LAYOUT:
            traced = 0
        elif op in ("Mul", "Div") and len(node.input) == 2:
            signals = [i for i in (0, 1) if graph.is_signal(node.input[i])]
            if op == "Div":
                if signals != [0]:
                    return steps, None
                traced = 0
            elif len(signals) == 1:
                traced = signals[0]
            elif len(signals) == 2 and not nested and common_ancestor(nctx) is None:
                # the side of a projection, the other an independent factor
                found = [i for i in (0, 1) if _projects(ctx, node.input[i])]
                if len(found) != 1:
                    return steps, None
                traced = found[0]
            else:
                return steps, None
        else:
            return steps, None
        steps.append((node_id, traced, current))
        current = node.input[traced]
    return steps, None


def _projects(ctx: RuleContext, name: str) -> bool:
    return _walk(ctx, name, nested=True)[1] is not None


def _factor(ctx: RuleContext, node_id: str, traced: int, shape) -> tuple | None:
    """(E[k], E[k^2]) of the other operand of a Mul (1/c of a Div by c), laid out at ``shape``."""
    nctx = ctx.for_node(node_id)
    other = 1 - traced
    rank = len(shape)
    c = nctx.const(other)
    if c is not None:
        c = np.asarray(c, np.float64)
        if nctx.node.op_type == "Div":
            if np.any(c == 0):
                return None
            c = 1.0 / c
        c = np.broadcast_to(lift(c, rank), shape)
        return c, c * c
    m = (ctx.known or {}).get(nctx.node.input[other])
    if m is None or m.mean.ndim > rank:
        return None
    mean, var = lift(m.mean, rank), lift(m.var, rank)
    return np.broadcast_to(mean, shape), np.broadcast_to(var + mean * mean, shape)


def _operand(ctx: RuleContext, steps: list, start: str, index: tuple):
    """(row index, column index, E[k], E[k^2]) of each element of the operand, laid out like
    it, by running ``steps`` (nearest first) forward from ``start``, whose elements' indices
    are ``index``."""
    shape = tuple(int(s) for s in ctx.graph.shape(start))
    arrays = [np.broadcast_to(index[0], shape), np.broadcast_to(index[1], shape), np.ones(shape),
              np.ones(shape)]
    for node_id, traced, out in reversed(steps):
        nctx = ctx.for_node(node_id)
        if nctx.node.op_type in _LAYOUT:
            moved = move(nctx, out, arrays)
            if moved is None:
                return None
            arrays = moved
            continue
        shape = tuple(int(s) for s in ctx.graph.shape(out))
        if int(np.prod(shape)) > ELEMENT_CAP:
            return None
        factor = _factor(ctx, node_id, traced, shape)
        if factor is None:
            return None
        arrays = [np.broadcast_to(a, shape) for a in arrays]
        arrays = [arrays[0], arrays[1], arrays[2] * factor[0], arrays[3] * factor[1]]
    return arrays


_BIJECTIVE = frozenset({"Cast", "Identity", "Transpose", "Unsqueeze", "Squeeze", "Reshape",
                        "Flatten"})


def _ancestors(ctx: RuleContext, row: str) -> list[tuple[str, list]]:
    """[(tensor, layout steps from it to ``row``, nearest first)]: ``row`` and the tensors it
    is a one-to-one relayout of (a Transpose before the projection)."""
    graph = ctx.graph
    out, steps, current = [(row, [])], [], row
    for _ in range(MAX_STEPS):
        node_id = graph.producer.get(current)
        if not node_id or graph.node(node_id).op_type not in _BIJECTIVE:
            break
        steps = steps + [(node_id, 0, current)]
        current = graph.node(node_id).input[0]
        out.append((current, steps))
    return out


def _cut(ctx: RuleContext, steps: list, candidates: list) -> tuple | None:
    """(steps up to the first tensor of ``candidates`` the walk passes, that candidate's
    entry), through Casts."""
    names = {name: k for k, (name, _) in enumerate(candidates)}
    for k, (node_id, traced, _) in enumerate(steps):
        source = ctx.graph.node(node_id).input[traced]
        for name in (source, without_casts(ctx, source)):
            if name in names:
                return steps[:k + 1], candidates[names[name]]
    return None


def _pairing(ctx: RuleContext, walks: list):
    """(row, [(steps, start tensor, its elements' (row, column) indices in the row or the
    projection, W or None, the tensor those index: the projection or the row)] for a and b)
    when the two walks reach one row, one of them through a projection; else None."""
    graph = ctx.graph
    for i in (0, 1):
        steps_i, projection = walks[i]
        if projection is None:
            continue
        p_id = graph.producer[projection]
        row = without_casts(ctx, graph.node(p_id).input[0])
        w = np.asarray(ctx.for_node(p_id).const(1), np.float64)
        p_shape, r_shape = graph.shape(projection), graph.shape(row)
        if not (static(p_shape) and static(r_shape)) or len(p_shape) != len(r_shape):
            return None
        own = (steps_i, projection, grid(p_shape), w, projection)
        steps_o, other = walks[1 - i]
        if other is not None:
            o_id = graph.producer[other]
            if without_casts(ctx, graph.node(o_id).input[0]) != row or other == projection:
                return None
            if not steps_i and not steps_o:
                return None  # two dense outputs of one row: shared_row's case
            wo = np.asarray(ctx.for_node(o_id).const(1), np.float64)
            theirs = (steps_o, other, grid(graph.shape(other)), wo, other)
        else:
            cut = _cut(ctx, steps_o, _ancestors(ctx, row))
            if cut is None:
                return None
            steps_c, (ancestor, layout) = cut
            index = coordinates(ctx, ancestor, layout, row, int(r_shape[-1]))
            if index is None:
                return None
            theirs = (steps_c, ancestor, index, None, row)
        return row, [own, theirs] if i == 0 else [theirs, own]
    return None


ROW_WORK = 1 << 23  # (row class, feature, column) products up to which rows keep their own


def _covariances(ctx: RuleContext, row: str, nu: np.ndarray, weights, index_a, index_b):
    """``Cov(P_a, P_b)`` at each element (rows taken equal: the caller masks the others). The
    row's covariance is its field's correlation (:func:`.channel_covariance.row_covariance`;
    the identity where it has none) scaled to each row's own variances ``nu`` (a token near a
    causal conv's border has less): ``Sigma_r = s_r R s_r``, ``s_r = sqrt(nu_r)``; then
    ``W_a^T Sigma_r W_b`` (``W = I`` for the row itself)."""
    field = row_covariance(ctx, row)
    d = nu.shape[1]
    if field is not None and field.axis == len(ctx.graph.shape(row)) - 1 and \
            field.head_axis is None and field.cov.shape == (d, d):
        scale = np.sqrt(np.maximum(np.diag(field.cov), 1e-300))
        corr = field.cov / np.outer(scale, scale)
    else:
        corr = None
    classes, inverse = np.unique(np.sqrt(nu), axis=0, return_inverse=True)
    inverse = np.ravel(inverse)
    wa, wb = (np.eye(d) if w is None else w for w in weights)
    if classes.shape[0] * d * max(wa.shape[1], wb.shape[1], d) > ROW_WORK:
        classes, inverse = np.sqrt(np.mean(nu, axis=0, keepdims=True)), np.zeros(nu.shape[0], int)
    left = classes[:, :, None] * wa[None]  # s_r W_a [class, d, i]
    right = classes[:, :, None] * wb[None]
    if corr is not None:
        right = np.matmul(corr, right)
    kernel = np.matmul(left.transpose(0, 2, 1), right)
    (ra, ca), (_, cb) = index_a, index_b
    return kernel[inverse[ra], ca, cb]


def product_deltas(inputs, ctx: RuleContext):
    """(delta mean, delta second moment), laid out like the product's output, that the shared
    row adds to ``a * b`` over the independent product (module docstring); None when the
    operands are not linear images of one row."""
    node, graph = ctx.node, ctx.graph
    if node.op_type != "Mul" or len(node.input) != 2 or any(m is None for m in inputs[:2]):
        return None
    out_shape = graph.shape(node.output[0])
    if not static(out_shape) or int(np.prod(out_shape)) > ELEMENT_CAP:
        return None
    walks = [_walk(ctx, n) for n in node.input]
    known = ctx.known or {}
    found = _pairing(ctx, walks)
    if found is None:
        return None
    row, pair = found  # [(steps, start, start's indices, W or None, reference)] for a, b
    r_shape = graph.shape(row)
    r = known.get(row)
    if r is None or not static(r_shape) or r.mean.ndim > len(r_shape):
        return None
    d = int(r_shape[-1])
    n_rows = int(np.prod(r_shape[:-1]))
    nu = np.broadcast_to(lift(r.var, len(r_shape)), r_shape).reshape(n_rows, d)
    weights, traced = [], []
    for steps, start, index, w, _ in pair:
        if w is not None and (w.shape[0] != d or not np.all(np.isfinite(w))):
            return None
        weights.append(w)
        arrays = _operand(ctx, steps, start, index)
        if arrays is None:
            return None
        traced.append((start, arrays))
    rank = out_rank(ctx)
    shape = tuple(int(s) for s in out_shape)
    try:
        (ra, ca, ka, ka2), (rb, cb, kb, kb2) = (
            [np.broadcast_to(lift(a, rank), shape) for a in t[1]] for t in traced)
    except ValueError:
        return None
    ra, ca, rb, cb = (x.astype(np.int64) for x in (ra, ca, rb, cb))
    same = ra == rb
    if not np.any(same):
        return None
    cov = np.where(same, _covariances(ctx, row, nu, weights, (ra, ca), (rb, cb)), 0.0)
    means = []
    for (steps, start, index, w, ref), (rows_i, cols_i) in zip(pair, ((ra, ca), (rb, cb))):
        m, ref_shape = known.get(ref), graph.shape(ref)
        if m is None or m.mean.ndim > len(ref_shape):
            return None
        flat = np.broadcast_to(lift(m.mean, len(ref_shape)), ref_shape).reshape(n_rows, -1)
        means.append(flat[rows_i, cols_i])
    d_mean = ka * kb * cov
    d_second = ka2 * kb2 * (2 * cov * cov + 4 * means[0] * means[1] * cov)
    if not (np.all(np.isfinite(d_mean)) and np.all(np.isfinite(d_second))):
        return None
    return d_mean, d_second


def with_shared_row(inputs, ctx: RuleContext, mean: np.ndarray, var: np.ndarray):
    """The independent product's (mean, var) grid with :func:`product_deltas` added, element
    by element, and folded back onto the grid's cells (``E_k = mean_f E``, ``Var_k = mean_f
    E^2 - E_k^2`` over the elements f of cell k); unchanged when they do not apply."""
    deltas = product_deltas(inputs, ctx)
    if deltas is None:
        return mean, var
    d_mean, d_second = deltas
    shape = d_mean.shape
    m_full = np.broadcast_to(mean, shape) + d_mean
    second = np.broadcast_to(var + np.asarray(mean) ** 2, shape) + d_second
    grid = np.broadcast_shapes(np.shape(mean), np.shape(var))
    grid = (1,) * (len(shape) - len(grid)) + tuple(grid)
    keep = {a for a in range(len(shape)) if grid[a] == shape[a] and shape[a] > 1}
    keep |= _varying(d_mean, shape) | _varying(d_second, shape)
    if int(np.prod([shape[a] for a in keep])) > KEEP_CAP:
        keep = {a for a in range(len(shape)) if grid[a] == shape[a]}
    axes = tuple(a for a in range(len(shape)) if a not in keep)
    if any(grid[a] != 1 for a in axes):
        return mean, var
    cell_mean = m_full.mean(axis=axes, keepdims=True)
    cell_second = second.mean(axis=axes, keepdims=True)
    return cell_mean, np.maximum(cell_second - cell_mean**2, 0.0)


def _varying(a: np.ndarray, shape) -> set[int]:
    """The axes along which ``a`` (laid out at ``shape``) is not constant."""
    return {k for k in range(len(shape)) if shape[k] > 1
            and not np.allclose(a, np.take(a, [0], axis=k), rtol=1e-12, atol=0.0)}


__all__ = ["product_deltas", "with_shared_row"]
