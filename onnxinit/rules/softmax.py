"""Softmax and LogSoftmax: closed form over rows of independent Gaussian logits, masks included.

For one row of logits ``a_k ~ N(m_k, s_k^2)`` (independent), ``p_k = e^{a_k} / (e^{a_k} + R_k)``
with ``R_k = sum_{l != k} e^{a_l}``. ``R_k`` is a sum of log-normals, taken as log-normal with
the same mean and variance (Fenton-Wilkinson)::

    E[R_k] = sum_{l!=k} e^{m_l + s_l^2/2},   Var[R_k] = sum_{l!=k} e^{2 m_l + s_l^2}(e^{s_l^2} - 1)
    log R_k ~ N(mu_R, sig_R^2),  sig_R^2 = log(1 + Var/E^2),  mu_R = log E - sig_R^2/2

so ``p_k = sigmoid(Z_k)`` with ``Z_k = a_k - log R_k ~ N(m_k - mu_R, s_k^2 + sig_R^2)``, and
``E[p_k]``, ``E[p_k^2]`` are one-dimensional Gauss-Hermite integrals (LogSoftmax: ``y_k =
-softplus(-Z_k)``). Exact for two logits and as the row grows; checked against Monte Carlo, the
variance is within 5% for logit variances up to 1 (attention at initialization: 0.01-0.3). Rows
with a larger logit variance, or logits that are not Gaussian (an element-wise chain), are
sampled instead (Monte Carlo, the row's draws chosen so that every row costs the same).

Masks: an element whose mean is -inf (or lies more than 1000 below its row's largest mean:
``finfo.min`` masks, -100 shifted-window masks with a margin) has probability 0 and leaves the
others' sums. A row with every element masked is NaN in onnxruntime; exporters replace it by 0
(``Where(IsNaN(p), 0, p)``) and so does this rule. Logits that carry a token covariance along
the softmax axis (``Moments.tokens``, from Q K^T) get its per-key variance profile, and the
covariance common to a row's unmasked logits (a component the keys share) is subtracted from
each variance first: softmax is invariant to adding the same value to a whole row.

Keys correlated unevenly (a component shared by some keys only: the real keys of a zero-padded
window against its constant padding) are sampled jointly (``key_groups.py``), and so are rows
whose keys read one query against fixed vectors (relative positions: ``fixed_forms.py``).

Sampled rows draw the spread of their variance across queries and, for cosine logits, the
bounded cosine law (``logit_law.py``); keys that are a dense layer of normalized rows (a
LayerNorm's, of few effective features) draw each row's deviations from the cosine law at the
rows' participation ratio, every row sampled (``normalised_keys.py``); P V reads the
covariance of a jointly sampled softmax's probabilities (:func:`probability_covariance`).

What is not modelled: non-Gaussian logits other than an element-wise chain of a Gaussian and
cosines.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..moments import Moments, compressed
from .context import RuleContext, signal
from .fixed_forms import joint_rows, row_form
from .id_masks import affine
from .key_groups import COVARIANCE_DRAWS, correlated_rows, correlation_factor
from .logit_law import cosine_dim, draw_scales, row_spread
from .normalised_keys import keys_dim
from .registry import rule
from .softmax_rows import (CLOSED_FORM_MAX_VAR, MASK_GAP, MC_DRAWS, MC_MIN, relative,
                           softmax_rows)
from .token_field import token_axes

# distinct rows that probability_covariance averages over at most: a padded Swin V2 window's
# 1536 (64 queries, 24 heads) cost 0.09 s a node in the per-row loop, this a sixth
COVARIANCE_ROWS = 256


def _grid(x: Moments, rank: int) -> tuple[np.ndarray, np.ndarray]:
    x = x.expand_rank(rank)
    mean, var = np.broadcast_arrays(x.mean, x.var)
    if mean.ndim == 0:
        return mean.reshape((1,) * rank), var.reshape((1,) * rank)
    return mean, var


def _unique_rows(mean: np.ndarray, var: np.ndarray):
    """(unique mean rows, unique var rows, inverse index): rows that repeat are computed once."""
    if mean.shape[0] == 1:
        return mean, var, np.zeros(1, dtype=np.int64)
    both = np.ascontiguousarray(np.concatenate([mean, var], axis=1))
    first: dict[bytes, int] = {}
    inverse = np.array([first.setdefault(row.tobytes(), len(first)) for row in both])
    keep = np.unique(inverse, return_index=True)[1]
    return mean[keep], var[keep], inverse


def _row_law(ctx: RuleContext) -> tuple[int | None, bool]:
    """(d, sample every row): the cosine law of a row's deviations, for cosine logits
    (:func:`.logit_law.cosine_dim`, sampled above the closed form's variance as before) or keys
    that are a dense layer of normalized rows (:mod:`.normalised_keys`: every row sampled, the
    closed form being Gaussian); (None, False) for Gaussian logits."""
    d = cosine_dim(ctx)
    if d is not None:
        return d, False
    d = keys_dim(ctx)
    return d, d is not None


def _over_rows(rows, cov, log: bool, ctx: RuleContext, rank: int, spread: float = 0.0) -> Moments:
    """Softmax of each row of ``Moments.rows`` (masks.keep_rows), pooled over the rows per
    position of the softmax axis: E_k = sum_r w_r E_rk, Var_k = sum_r w_r (Var_rk + E_rk^2)
    - E_k^2."""
    mean, var = rows.mean, rows.var
    if cov is not None:
        var = var * np.diag(cov)
        var = np.maximum(var - shared_part(mean, var, cov)[:, None], 0.0)
    um, uv, inverse = _unique_rows(mean, var)
    d, sample = _row_law(ctx)
    e, v = softmax_rows(um, uv, log=log, rng=ctx.rng(), spread=spread, cosine=d, sample=sample)
    weight = np.bincount(inverse, weights=rows.weight, minlength=um.shape[0])[:, None]
    finite = np.isfinite(e)
    m = (weight * np.where(finite, e, 0.0)).sum(axis=0) / np.maximum((weight * finite).sum(axis=0), 1e-300)
    second = (weight * np.where(finite, v + e**2, 0.0)).sum(axis=0) / np.maximum(
        (weight * finite).sum(axis=0), 1e-300)
    m = np.where(finite.any(axis=0), m, -np.inf)
    var_out = np.where(finite.any(axis=0), np.maximum(second - m**2, 0.0), 0.0)
    return Moments.along(m, var_out, rank - 1, rank)


def _key_covariance(x: Moments, shape, inner: list[int]) -> np.ndarray | None:
    """The logits' token covariance along the softmax axis (per unit of variance), if any."""
    t = x.tokens
    if t is None or len(inner) != 1 or token_axes(t, len(shape)) != inner or shape[inner[0]] != t.n:
        return None
    return t.cov


def shared_part(mean: np.ndarray, var: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Per row [R]: the covariance common to its unmasked logits, ``mean_{k != l} Cov``, from
    the row's variance scale and the key covariance (a softmax ignores it)."""
    rel, masked, _ = relative(mean)
    allowed = (~masked).astype(np.float64)
    count = allowed.sum(axis=1)
    pairs = ((allowed @ cov) * allowed).sum(axis=1) - allowed @ np.diag(cov)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_cov = np.where(count > 1, pairs / np.maximum(count * (count - 1), 1), 0.0)
        scale = np.where(count > 0, (var * allowed).sum(axis=1) / np.maximum(count, 1), 0.0)
        profile = np.where(count > 0, (allowed * np.diag(cov)).sum(axis=1) / np.maximum(count, 1), 1.0)
    return np.maximum(mean_cov, 0.0) * scale / np.maximum(profile, 1e-300)


def _rows(x: Moments, ctx: RuleContext):
    """The softmax's rows: ``Moments`` when its input carries per-window rows (masks.keep_rows,
    done), else (mean [R, n], var [R, n], key covariance or None, element-wise chain, layout)
    with the layout ``(perm, outer grid, inner grid)`` that puts the rows back."""
    shape = ctx.in_shape(0)
    rank = len(shape)
    log = ctx.node.op_type == "LogSoftmax"
    if ctx.opset >= 13:
        inner = [ctx.attr("axis", -1) % rank]
    else:
        inner = list(range(ctx.attr("axis", 1) % rank, rank))
    n = int(np.prod([shape[a] for a in inner]))
    outer = [a for a in range(rank) if a not in inner]
    mean, var = _grid(x, rank)
    chain = ()
    src = x.source
    if src is not None and src.chain and x.is_scalar and np.size(src.mean) == np.size(src.var) == 1:
        chain = src.chain
        mean = np.full((1,) * rank, float(np.ravel(src.mean)[0]))
        var = np.full((1,) * rank, float(np.ravel(src.var)[0]))
    cov = _key_covariance(x, shape, inner)
    if x.rows is not None and inner == [rank - 1] and x.rows.mean.shape[1] == n and not chain:
        return _over_rows(x.rows, cov, log, ctx, rank, row_spread(ctx))
    perm = outer + inner
    if cov is not None:  # the logits' field: per-key variance profile
        var = var * np.diag(cov).reshape([n if a == inner[0] else 1 for a in range(rank)])
    mean, var = mean.transpose(perm), var.transpose(perm)
    outer_grid = mean.shape[: len(outer)]
    rows = int(np.prod(outer_grid, dtype=np.int64))
    inner_grid = tuple(shape[a] for a in inner)
    mean = np.broadcast_to(mean, outer_grid + inner_grid).reshape(rows, n)
    var = np.broadcast_to(var, outer_grid + inner_grid).reshape(rows, n)
    return mean, var, cov, chain, (perm, outer_grid, inner_grid)


def _joint_factor(cov, chain, log: bool):
    """F of the keys sampled jointly (key_groups.correlation_factor), None otherwise."""
    return correlation_factor(cov) if cov is not None and not (log or chain) else None


def _row_moments(mean, var, cov, chain, log: bool, ctx: RuleContext):
    """(E, Var) [R, n] of the softmax of rows [R, n] of logits (the rule's docstring): keys
    correlated unevenly sampled jointly, else the closed form or Monte Carlo per row."""
    factor = _joint_factor(cov, chain, log)
    spread = row_spread(ctx) if not chain else 0.0
    if factor is not None:  # keys correlated unevenly (key_groups.py): sampled jointly
        um, uv, inverse = _unique_rows(mean, var)
        rel, masked, empty = relative(um)
        e, v = correlated_rows(rel, np.where(masked, 0.0, uv), masked, factor, ctx.rng(),
                               MC_DRAWS, MC_MIN, scales=draw_scales(spread))
        gone = masked | empty[:, None]
        return np.where(gone, 0.0, e)[inverse], np.where(gone, 0.0, v)[inverse]
    shared = shared_part(mean, var, cov) if cov is not None else None
    if shared is not None:
        var = np.maximum(var - shared[:, None], 0.0)
    um, uv, inverse = _unique_rows(mean, var)
    d, sample = (None, False) if chain else _row_law(ctx)
    e, v = softmax_rows(um, uv, log=log, rng=ctx.rng(), chain=chain, spread=spread,
                        cosine=d, sample=sample)
    return e[inverse], v[inverse]


def _distinct_rows(mean: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of each distinct row's first occurrence, each row's distinct index) of rows
    [R, n], by three random projections (the masked entries' values apart from the others': a
    ``finfo.min`` would swamp the logits' digits); equal rows project equally."""
    rng = np.random.default_rng(0)
    big = mean < -1e30
    keys = np.stack([np.where(big, np.maximum(mean, -1e39) * 1e-30, 0.0)
                     @ rng.standard_normal(mean.shape[1]),
                     np.where(big, 0.0, mean) @ rng.standard_normal(mean.shape[1]),
                     var @ rng.standard_normal(mean.shape[1])])
    order = np.lexsort(keys)
    ordered = keys[:, order]
    new = np.concatenate([[True], np.any(ordered[:, 1:] != ordered[:, :-1], axis=0)])
    group = np.cumsum(new) - 1
    inverse = np.empty_like(group)
    inverse[order] = group
    return order[new], inverse


def _random_mask(ctx: RuleContext, shape, log: bool) -> Moments | None:
    """Softmax over the last axis of logits mixed with a mask of the token ids
    (id_masks.affine: per sample s of the ids, rows ``N(M_s, V_s)``, a masked key at
    ``finfo.min``): each sample's rows as the rule computes rows, then over the samples
    ``E = mean_s E_s``, ``Var = mean_s (Var_s + E_s^2) - E^2`` (the expectation over the
    mask). The leaf logits' token covariance is kept when they have the softmax input's shape."""
    found = affine(ctx, ctx.node.input[0])
    if found is None:
        return None
    leaf, mean_s, var_s = found
    rank = len(shape)
    if mean_s.ndim != rank or mean_s.shape[1:] != tuple(shape[1:]):
        return None
    n = shape[-1]
    lm = ctx.known[leaf]
    cov = _key_covariance(lm, shape, [rank - 1]) if ctx.graph.shape(leaf) == tuple(shape) else None
    mean, var = mean_s.reshape(-1, n), var_s.reshape(-1, n)
    if cov is not None:  # the logits' field: per-key variance profile
        var = var * np.diag(cov)
    first, inverse = _distinct_rows(mean, var)
    e, v = _row_moments(mean[first], var[first], cov, (), log, ctx)
    e, v = (a[inverse].reshape(mean_s.shape) for a in (e, v))
    out_mean = e.mean(axis=0, keepdims=True)
    out_var = np.maximum((v + e * e).mean(axis=0, keepdims=True) - out_mean**2, 0.0)
    return compressed(out_mean, out_var)


@rule("Softmax", "LogSoftmax")
def softmax(inputs, ctx: RuleContext):
    """y = softmax(x) (LogSoftmax: x - logsumexp(x)) over ``axis`` (opset >= 13; before 13 over
    the flattened axes [axis:], default axis 1), n entries, per row of the input's statistics:
    closed form for Gaussian logits (module docstring: p_k = sigmoid(a_k - log R_k) with R_k a
    log-normal of the other entries' moments), Monte Carlo for rows with a logit variance
    above 1 or non-Gaussian logits (an element-wise source). Masked entries (-inf, finfo.min)
    get probability 0; E = 1/n exactly for n identically distributed logits. Logits that hold
    a random linear form of fixed vectors over the last axis (relative-position attention) are
    sampled jointly per row (fixed_forms.py)."""
    x = signal(inputs, 0)
    log = ctx.node.op_type == "LogSoftmax"
    shape = ctx.in_shape(0)
    last = bool(shape) and ctx.attr("axis", -1 if ctx.opset >= 13 else 1) % len(shape) == len(
        shape) - 1
    if last and (random := _random_mask(ctx, shape, log)) is not None:
        return [random]  # a mask computed from the token ids (id_masks.py)
    form = None if log or not last or (x.source is not None and x.source.chain) else row_form(
        ctx, x, shape)
    if form is not None:  # keys of a linear form of fixed vectors (fixed_forms.py)
        e, v = joint_rows(form, ctx.rng(), MC_DRAWS, MC_MIN, MASK_GAP)
        return [compressed(e.reshape(shape), v.reshape(shape))]
    prepared = _rows(x, ctx)
    if isinstance(prepared, Moments):
        return [prepared]
    mean, var, cov, chain, (perm, outer_grid, inner_grid) = prepared
    e, v = _row_moments(mean, var, cov, chain, log, ctx)
    inv = np.argsort(perm)
    out_mean = e.reshape(outer_grid + inner_grid).transpose(inv)
    out_var = v.reshape(outer_grid + inner_grid).transpose(inv)
    return [compressed(out_mean, out_var)]


def probability_covariance(ctx: RuleContext, node_id: str) -> np.ndarray | None:
    """``Cov(p_k, p_l)`` [n, n] averaged over the rows of the Softmax node ``node_id`` whose
    keys are sampled jointly (key_groups.py: the real keys of a zero-padded window move together
    against the padding), from the same draws as its own (its generator); None for a softmax
    whose rows are taken as independent keys (their covariance is then the diagonal less the
    share that keeps each row's sum at 1, what P V assumes). Each row's sample covariance over
    ``key_groups.COVARIANCE_DRAWS`` draws of its own, weighted by its share of the rows; over
    ``COVARIANCE_ROWS`` evenly spaced distinct rows where there are more (an average)."""
    node = ctx.graph.node(node_id)
    x = (ctx.known or {}).get(node.input[0])
    if node.op_type != "Softmax" or x is None:
        return None
    sctx = ctx.for_node(node_id)
    prepared = _rows(x, sctx)
    if isinstance(prepared, Moments):
        return None
    mean, var, cov, chain, _ = prepared
    factor = _joint_factor(cov, chain, False)
    if factor is None:
        return None
    um, uv, inverse = _unique_rows(mean, var)
    weights = np.bincount(np.ravel(inverse), minlength=um.shape[0]).astype(np.float64)
    if um.shape[0] > COVARIANCE_ROWS:  # evenly spaced rows (windows, heads, queries in order)
        picked = np.linspace(0, um.shape[0] - 1, COVARIANCE_ROWS).round().astype(np.int64)
        um, uv, weights = um[picked], uv[picked], weights[picked]
    rel, masked, empty = relative(um)
    weights = np.where(empty, 0.0, weights)
    if weights.sum() <= 0:
        return None
    _, _, joint = correlated_rows(rel, np.where(masked, 0.0, uv), masked, factor, sctx.rng(),
                                  0, COVARIANCE_DRAWS, weights / weights.sum(),
                                  scales=draw_scales(row_spread(replace(sctx, known=ctx.known))))
    return joint


__all__ = ["CLOSED_FORM_MAX_VAR", "MASK_GAP", "probability_covariance", "shared_part", "softmax",
           "softmax_rows"]
