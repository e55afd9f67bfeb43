"""What the rules read from the covariance fields of :mod:`.channel_covariance`: the factor
by which a 1x1 Conv's, a dense layer's or a LayerNorm's per-index variances and the logits'
``Q K^T`` variance differ from the independent-features formulas their rules use."""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from . import covariance_maps as maps
from .channel_covariance import covariance, pointwise, row_covariance
from .row_field_maps import MAX_CHANNELS, MAX_ROW_FEATURES
from .context import RuleContext
from .elementwise import UNARY
from .gram import gram_node
from .mixed_values import output_covariance


def layer_norm_factor(ctx: RuleContext, x: Moments, shape, eps: float) -> np.ndarray | None:
    """Per feature of a LayerNormalization over the last axis of a tensor whose features
    carry a field S: its variance over the one for independent features, ``(nu_f (1 - 2/n) +
    nu_bar / n) / (var(mu) + nu_bar (n - 1) / n + eps)`` (the LayerNorm rule's). Up to
    ``MAX_ROW_FEATURES`` features: each row divided by its own scale, to second order
    (:func:`.covariance_maps.normalized_variances`; few inputs make the row's scale vary:
    0.91-1.07x of the measured with a common scale, 0.96-1.03x so, 12 inputs for 32
    features); beyond, ``(P S P)_ff / (var(mu) + tr(P S P) / n + eps)``, the scale common."""
    last = len(shape) - 1
    f = covariance(ctx, ctx.node.input[0])
    if f is None or f.axis != last or f.head_axis is not None or f.cov.shape[0] != shape[last]:
        return None
    n, s = shape[last], f.cov
    mu, nu = x.values_along(last, n)
    independent = nu * (1 - 2 / n) + nu.mean() / n
    if n <= MAX_ROW_FEATURES:
        normalized = maps.normalized_variances(s, mu, eps)
    else:
        centred = np.diag(s) - 2.0 * s.mean(axis=1) + s.mean()
        normalized = centred / (mu.var() + centred.mean() + eps)
    ratio = normalized / np.maximum(independent / (mu.var() + nu.mean() * (n - 1) / n + eps),
                                    1e-300)
    return np.where(independent > 0, np.maximum(ratio, 0.0), 1.0)


def contraction_factor(ctx: RuleContext, a: Moments, b: Moments, dense: bool = False):
    """For ``A @ B`` of independent activations whose contracted axis carries a field (A's last,
    B's second to last), per head where the field is split into heads: ``sum_de (S_a + mu_a
    mu_a^T)_de (S_b + mu_b mu_b^T)_de - (mu_a . mu_b)^2`` over the same with diagonal fields
    (the MatMul rule's), the per-feature moments pooled over the other axes; a scalar, or an
    array along the head axis; None where neither operand has a field. ``dense``: an operand
    that is a dense layer's output (through layout ops, :func:`_dense_output`) without a field
    takes the one it starts, ``W^T diag(nu) W`` (logits ``Q K^T`` of two projections: their
    features' cross terms ``sum_{d != e} S_q,de S_k,de``, which the independent-features sum
    leaves out, 1.09x high on a single head of 16 features)."""
    found = _head_operands(ctx, a, b, dense=dense)
    if found is None:
        return None
    second, means, head, count, rank = found
    dot = (means[0] * means[1]).sum(axis=1)
    full = (second[0] * second[1]).sum(axis=(1, 2)) - dot**2
    diagonal = np.einsum("hdd->hd", second[0]) * np.einsum("hdd->hd", second[1])
    independent = diagonal.sum(axis=1) - ((means[0] * means[1]) ** 2).sum(axis=1)
    factor = np.where(independent > 0, np.maximum(full, 0.0) / np.where(
        independent > 0, independent, 1.0), 1.0)
    if head is None:
        return float(factor[0])
    return factor.reshape((1,) * head + (count,) + (1,) * (rank - head - 1))


def _head_operands(ctx: RuleContext, a: Moments, b: Moments, seconds: bool = True,
                   fieldless: bool = False, dense: bool = False):
    """Per head, the contracted features' second moments (covariance with ``seconds=False``)
    and means of ``A @ B``'s operands [H, k, k] and [H, k] (a field's, else the diagonal of the
    per-feature variances), the head axis, the head count and the rank; None where neither
    operand has a field on the contracted axis (unless ``fieldless``: both diagonal);
    ``dense``: a dense layer's output takes the field it starts (:func:`contraction_factor`)."""
    shapes = [ctx.graph.shape(n) for n in ctx.node.input[:2]]
    if any(not s or len(s) < 2 for s in shapes) or len(shapes[0]) != len(shapes[1]):
        return None
    rank, k = len(shapes[0]), shapes[0][-1]
    axes = (rank - 1, rank - 2)
    fields = []
    for name, axis in zip(ctx.node.input[:2], axes):
        f = covariance(ctx, name)
        if f is None and dense and _dense_output(ctx.graph, name):
            f = row_covariance(ctx, name)
        fields.append(f if f is not None and f.axis == axis and f.cov.shape[-1] == k else None)
    if all(f is None for f in fields) and not fieldless:
        return None
    heads = {f.head_axis for f in fields if f is not None and f.head_axis is not None}
    if len(heads) > 1 or (heads and min(heads) >= rank - 2):
        return None
    head = heads.pop() if heads else None
    count = shapes[0][head] if head is not None else 1
    second, means = [], []
    for m, f, shape, axis in zip((a, b), fields, shapes, axes):
        mu, nu = (_per_head(t, shape, axis, head) for t in (m.expand_rank(rank).mean,
                                                             m.expand_rank(rank).var))
        if f is None:
            cov = nu[:, :, None] * np.eye(k)
        else:
            cov = f.cov if f.cov.ndim == 3 else np.broadcast_to(f.cov, (count, k, k))
        if cov.shape[0] != count or mu.shape[0] not in (1, count):
            return None
        mu = np.broadcast_to(mu, (count, k))
        second.append(cov + mu[:, :, None] * mu[:, None, :] if seconds else cov)
        means.append(mu)
    return second, means, head, count, rank


def row_variance_spread(ctx: RuleContext, q: Moments, k: Moments,
                        unit_queries: bool = False) -> float | None:
    """For the logits ``Q K^T`` of the node of ``ctx``: the squared coefficient of variation,
    across queries, of a row's variance over the keys. Given the query q, the keys' logits
    ``q . k_j`` vary by ``v(q) = q^T S q`` (S the keys' feature covariance, per head), so for
    q of mean mu and covariance M::

        E v = tr(S M) + mu^T S mu,   Var v = 2 tr((S M)^2) + 4 mu^T S M S mu

    (Gaussian q); ``Var v / (E v)^2`` averaged over the heads weighted by ``E v``. About
    ``2 / d`` for d isotropic features; more where the features are correlated (a patch
    embedding's); the features' variances alone where no field is carried. Queries scaled to
    unit length (cosine attention) have a constant energy, which adds ``excess tr(S M)^2``,
    ``excess = -2 tr(M^2) / tr(M)^2`` (as :mod:`.pair_algebra`'s normalised rows): only the
    keys' anisotropy then varies the rows (0 for isotropic keys). Queries and keys that are
    dense layers' outputs take the fields they start (``W^T diag(nu) W``: a single head's
    projections of 16 features, the Softmax 1.04x -> 0.99x), except in a Gram ``A A^T``,
    whose diagonal is the row's own norm."""
    found = _head_operands(ctx, q, k, seconds=False, fieldless=True,
                           dense=not gram_node(ctx.graph, ctx.node))
    if found is None:
        return None
    (m, s), (mu, _), _, _, _ = found
    sm = s @ m
    mean = np.einsum("hii->h", sm) + np.einsum("hi,hij,hj->h", mu, s, mu)
    var = 2 * np.einsum("hij,hji->h", sm, sm) + 4 * np.einsum("hi,hij,hj->h", mu, sm @ s, mu)
    if unit_queries:
        tr_m = np.einsum("hii->h", m)
        with np.errstate(divide="ignore", invalid="ignore"):
            excess = np.where(tr_m > 0, -2 * np.einsum("hij,hji->h", m, m) / tr_m**2, 0.0)
        var = np.maximum(var + excess * np.einsum("hii->h", sm) ** 2, 0.0)
    if not np.all(np.isfinite(mean)) or float(mean.sum()) <= 0:
        return None
    live = mean > 0
    spread = np.where(live, var / np.where(live, mean, 1.0) ** 2, 0.0)
    return float((spread * mean).sum() / mean.sum())


def squared_correlation(ctx: RuleContext, name: str):
    """The mean squared correlation of two distinct features along the last axis of ``name``
    from its field, per head where the field is split into heads (an array laid out along the
    head axis at the tensor's rank), a scalar without heads; None without a field there."""
    shape = ctx.graph.shape(name)
    f = covariance(ctx, name)
    if f is None or not shape or f.axis != len(shape) - 1 or f.cov.shape[-1] < 2:
        return None
    d = np.sqrt(np.maximum(np.einsum("...ii->...i", f.cov), 1e-300))
    r = f.cov / (d[..., :, None] * d[..., None, :])
    n = r.shape[-1]
    off = (np.square(r).sum(axis=(-2, -1)) - np.square(np.einsum("...ii->...i", r)).sum(axis=-1))
    squared = off / (n * (n - 1))
    if f.head_axis is None or np.ndim(squared) == 0:
        return float(squared)
    rank = len(shape)
    return squared.reshape((1,) * f.head_axis + (-1,) + (1,) * (rank - f.head_axis - 1))


def _per_head(values: np.ndarray, shape, axis: int, head: int | None) -> np.ndarray:
    """``values`` (broadcastable to ``shape``) averaged over every axis but ``head`` and
    ``axis``: ``[H, n]`` (``H`` = 1 without heads)."""
    full = np.broadcast_to(values, shape)
    keep = [head, axis] if head is not None else [axis]
    other = tuple(i for i in range(len(shape)) if i not in keep)
    out = full.mean(axis=other) if other else np.asarray(full)
    return out.reshape(-1, shape[axis])


def cross_term_factor(ctx: RuleContext, w: np.ndarray) -> np.ndarray | None:
    """Per output channel of the 1x1 Conv of ``ctx`` (weight ``w`` ``[C_out, C_in, 1...]``),
    ``w_j^T S w_j / sum_m W_jm^2 S_mm`` for its input's field S; None without one."""
    if not pointwise(ctx, ctx.node):
        return None
    f = covariance(ctx, ctx.node.input[0])
    w = np.asarray(w, dtype=np.float64).reshape(w.shape[0], -1)
    if f is None or f.axis != 1 or f.head_axis is not None or f.cov.shape[0] != w.shape[1]:
        return None
    return _finite(maps.cross_term_factor(f.cov, w))


_LINEAR = ("Transpose", "Reshape", "Identity", "Dropout", "Add", "Sub", "Mul", "Div")


def _dense_output(graph, name: str, functions: bool = False) -> bool:
    """``name`` is a MatMul by a constant 2-D weight through layout ops and constant offsets
    or scales (a bias; keys projected, transposed, projected again): its features' covariance
    is exactly ``W^T diag(nu) W``, no element-wise map between (``functions``: or through
    element-wise functions of one signal, a ReLU or GELU, whose field is Mehler's)."""
    for _ in range(8):
        nid = graph.producer.get(name)
        if nid is None:
            return False
        node = graph.node(nid)
        signals = [n for n in node.input if n and graph.is_signal(n)]
        if len(signals) != 1 or (signals[0] != node.input[0]
                                 and node.op_type not in ("Add", "Mul")):
            return False
        if node.op_type == "MatMul":
            return np.ndim(graph.value(node.input[1])) == 2
        if node.op_type not in _LINEAR and not (functions and node.op_type in UNARY):
            return False
        name = signals[0]
    return False


def feature_cross_term_factor(ctx: RuleContext, w_in_out: np.ndarray) -> np.ndarray | None:
    """Per output feature of the MatMul (or Gemm) of ``ctx`` by ``W[D, E]``, the same for its
    input's field over the last axis (a dense layer's output, through layout ops and constant
    offsets and scales, has one: ``W^T diag(nu) W``, :func:`.channel_covariance.row_covariance`),
    or for an attention output's features (:mod:`.mixed_values`); None without either.
    Through element-wise functions as well (an MLP's second layer reading ``f(x U)``: each
    output feature's variance is ``v_j^T S v_j``, S of rank D where U expands D features),
    and a single unit (``E = 1``: a binary or regression head) reads one quadratic form
    ``w^T S w``, whose cross terms do not average out over many units: it takes the row field
    of any input (a Siamese head's ``|f(a) - f(b)|``)."""
    shape = ctx.graph.shape(ctx.node.input[0])
    f = covariance(ctx, ctx.node.input[0]) if shape else None
    if f is None and shape and (np.shape(w_in_out)[1] == 1 or _dense_output(
            ctx.graph, ctx.node.input[0], functions=True)):
        f = row_covariance(ctx, ctx.node.input[0])
    d = np.shape(w_in_out)[0]
    if f is None or f.axis != len(shape) - 1 or f.head_axis is not None or f.cov.shape[0] != d:
        s = output_covariance(ctx, ctx.node.input[0]) if shape else None
        if s is None or s.shape[0] != d:
            return None
        return _finite(maps.cross_term_factor(s, np.asarray(w_in_out, dtype=np.float64).T))
    return _finite(maps.cross_term_factor(f.cov, np.asarray(w_in_out, dtype=np.float64).T))


def _finite(factor):
    """``factor``, or None where a covariance too large for its float overflowed in it (a
    signal past 1e150: the independent sum is then the prediction)."""
    return factor if factor is None or np.all(np.isfinite(factor)) else None


def product_terms(ctx: RuleContext, a: Moments, b: Moments):
    """For ``A @ B`` of independent activations, summed over the heads: ``(tr(S_a S_b),
    mu_b^T S_a mu_b, mu_a^T S_b mu_a)``, the three parts of a cell's variance (the second the
    variation of A's row, the same in every column of the row; the third B's column's), with
    the operands' fields on the contracted axis (their per-feature variances where they have
    none) and the per-feature means pooled over the other axes; None where the operands do
    not fit (:func:`_head_operands`) or have neither a field nor fewer than ``MAX_CHANNELS``
    features."""
    shape = ctx.graph.shape(ctx.node.input[0])
    fieldless = bool(shape) and shape[-1] <= MAX_CHANNELS
    found = _head_operands(ctx, a, b, seconds=False, fieldless=fieldless)
    if found is None:
        return None
    (sa, sb), (ma, mb), _, _, _ = found
    trace = float(np.einsum("hij,hji->", sa, sb))
    row = float(np.einsum("hi,hij,hj->", mb, sa, mb))
    column = float(np.einsum("hi,hij,hj->", ma, sb, ma))
    return trace, row, column
