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
bounded cosine law (``logit_law.py``); P V reads the covariance of a jointly sampled softmax's
probabilities (:func:`probability_covariance`).

What is not modelled: non-Gaussian logits other than an element-wise chain of a Gaussian and
cosines.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..moments import Moments, compressed
from .context import RuleContext, signal
from .fixed_forms import joint_rows, row_form
from .key_groups import COVARIANCE_DRAWS, correlated_rows, correlation_factor
from .logit_law import (cosine_deviates, cosine_dim, cosine_of, draw_scales, row_scales,
                        row_spread)
from .registry import rule
from .token_field import token_axes

_GH_Z, _GH_W = np.polynomial.hermite_e.hermegauss(16)  # 3e-7 of the variance (sigmoid is smooth)
_GH_W = _GH_W / _GH_W.sum()
CLOSED_FORM_MAX_VAR = 1.0  # logit variance up to which the closed form is used
MASK_GAP = 1000.0  # an element this far below its row's largest mean has probability 0
_MC_DRAWS = 1 << 21  # logits drawn per node by the Monte Carlo path (in all)
_MC_MIN = 400  # draws per row at least
# row elements x draws evaluated at once by the Monte Carlo path: the same draws in the same
# order at any size (one generator stream), only the partial sums' grouping moves (5e-14
# relative); cache-sized temporaries, where 1 << 21 took 63 ms for 2^21 draws, this 47 ms
_CHUNK = 1 << 16
# distinct rows that probability_covariance averages over at most: a padded Swin V2 window's
# 1536 (64 queries, 24 heads) cost 0.09 s a node in the per-row loop, this a sixth
COVARIANCE_ROWS = 256
# row elements x quadrature nodes evaluated at once by the closed form: its temporaries stay in
# cache (GPT-2's 12 attention softmaxes: 1.0-1.2 s of CPU at 1 << 21, 0.85-0.88 s at this)
_CLOSED_CHUNK = 1 << 15
# rows of a closed-form-only softmax evaluated at once: its some thirty passes then stay in
# cache (GPT-2's 1536 x 128 attention rows: 24 -> 19 ms a node)
_ROW_BLOCK = 128


def _relative(mean: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean - row max, masked, empty rows): masked elements get -inf."""
    masked = ~np.isfinite(mean) | (mean < np.max(np.where(np.isfinite(mean), mean, -np.inf),
                                                 axis=1, keepdims=True) - MASK_GAP)
    empty = masked.all(axis=1)
    with np.errstate(invalid="ignore"):
        top = np.max(np.where(masked, -np.inf, mean), axis=1, keepdims=True)
        rel = np.where(masked, -np.inf, mean - np.where(empty[:, None], 0.0, top))
    return rel, masked, empty


def _identical(rel, var, masked) -> np.ndarray:
    """Rows whose unmasked elements all have the same mean and variance."""
    def spread(a):
        return np.max(np.where(masked, -np.inf, a), axis=1) - np.min(np.where(masked, np.inf, a), axis=1)

    with np.errstate(invalid="ignore"):
        return (spread(rel) == 0) & (spread(var) == 0)


def _closed_form(rel, var, masked, log):
    """Fenton-Wilkinson + Gauss-Hermite for rows [R, n] (see the module docstring)."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        e1 = np.where(masked, 0.0, np.exp(rel + var / 2))
        e2 = np.where(masked, 0.0, np.exp(2 * rel + var) * np.expm1(var))
        m1 = e1.sum(axis=1, keepdims=True) - e1
        v1 = e2.sum(axis=1, keepdims=True) - e2
        alone = m1 <= 0  # the only element of its row that is not masked: p = 1
        safe = np.where(alone, 1.0, m1)
        sig2 = np.log1p(v1 / safe**2)
        zm = np.where(masked, 0.0, rel - (np.log(safe) - sig2 / 2))
        zs = np.sqrt(np.where(masked, 0.0, var + sig2))
    ex, ex2 = _sigmoid_moments(zm, zs, masked, log)
    if log:
        return ex, ex2 - ex**2
    ex = np.where(masked, 0.0, np.where(alone, 1.0, ex))
    ex2 = np.where(masked, 0.0, np.where(alone, 1.0, ex2))
    var_out = np.maximum(ex2 - ex**2, 0.0)
    ex = ex / np.maximum(ex.sum(axis=1, keepdims=True), 1e-300)  # the row sums to 1 exactly
    return ex, var_out


def _sigmoid_moments(zm, zs, masked, log):
    """(E[y], E[y^2]) of y = sigmoid(Z) (LogSoftmax: -softplus(-Z)), Z ~ N(zm, zs^2), by
    Gauss-Hermite per element of rows [R, n]. Computed once per distinct value: an element
    equal (zm and zs) to the first unmasked element of its row takes that one's result (rows
    of identically distributed logits, attention at initialization, are a single value), and
    masked elements (a causal mask is half of every attention row) take the value at Z = 0,
    as if computed (the callers overwrite them)."""
    def both(m, s):
        y = s[:, None] * _GH_Z
        y += m[:, None]
        if log:
            y = -np.logaddexp(0.0, -y)
        else:  # sigmoid as the Sigmoid rule's: numpy's vectorised exp, in place (a third of
            # scipy's expit, whose C library exp is the only difference: an ulp)
            np.negative(y, out=y)
            np.exp(y, out=y)
            y += 1.0
            np.divide(1.0, y, out=y)
        first = y @ _GH_W
        y *= y
        return first, y @ _GH_W

    keep = ~masked
    rows = np.arange(zm.shape[0])
    lead = np.argmax(keep, axis=1)  # each row's first unmasked element
    same = keep & (zm == zm[rows, lead][:, None]) & (zs == zs[rows, lead][:, None])
    same[rows, lead] = False
    own = keep & ~same
    m, s = zm[own], zs[own]
    first, second = np.empty(m.size), np.empty(m.size)
    step = max(1, _CLOSED_CHUNK // _GH_Z.size)
    for i in range(0, m.size, step):
        first[i:i + step], second[i:i + step] = both(m[i:i + step], s[i:i + step])
    at_zero = both(np.zeros(1), np.zeros(1))
    ex = np.full(zm.shape, at_zero[0][0])
    ex2 = np.full(zm.shape, at_zero[1][0])
    ex[own], ex2[own] = first, second
    ex = np.where(same, ex[rows, lead][:, None], ex)
    ex2 = np.where(same, ex2[rows, lead][:, None], ex2)
    return ex, ex2


def _monte_carlo(rel, var, masked, log, rng, chain=(), spread=0.0, cosine=None):
    """Sampled E and Var per element of rows [R, n] (masked elements excluded); ``spread`` > 0:
    each draw's deviations scaled by ``sqrt(g)``, g of mean 1 and squared coefficient of
    variation ``spread`` (:func:`row_scales`); ``cosine`` (d): the deviations drawn from the
    cosine law of unit rows of d features (:func:`cosine_deviates`) instead of the Gaussian."""
    rows, n = rel.shape
    count = max(_MC_MIN, _MC_DRAWS // max(1, rows * n))
    ex = np.zeros(rel.shape)
    ex2 = np.zeros(rel.shape)
    std = np.sqrt(var)
    base = np.where(masked, 0.0, rel)
    step = max(1, _CHUNK // n)
    with np.errstate(all="ignore"):
        for r in range(rows):
            done = 0
            row_masked = bool(masked[r].any())  # else the two masks below change nothing
            while done < count:
                c = min(step, count - done)
                # in place where it computes the same values: each temporary of 2^21
                # values is 16 MB of fresh pages, whose faults cost as much as the arithmetic
                z = rng.standard_normal((c, n))
                if cosine is not None:
                    z = cosine_of(z, cosine_deviates(cosine))
                z *= std[r]
                if spread > 0:
                    z *= row_scales(rng, c, spread)[:, None]
                z += base[r]
                for f in chain:
                    z = f.fn(z)
                if row_masked:
                    z = np.where(masked[r], -np.inf, z)
                z -= z.max(axis=1, keepdims=True)
                e = np.exp(z)
                total = e.sum(axis=1)
                if log:
                    y = np.subtract(z, np.log(total)[:, None], out=z)
                    if row_masked:
                        y = np.where(masked[r], 0.0, y)
                    ex[r] += y.sum(axis=0)
                    y *= y
                    ex2[r] += y.sum(axis=0)
                else:  # p = e / total; masked elements are exp(-inf) = 0 already
                    weight = 1.0 / total
                    ex[r] += weight @ e
                    e *= e
                    weight *= weight
                    ex2[r] += weight @ e
                done += c
    ex, ex2 = ex / count, ex2 / count
    return ex, np.maximum(ex2 - ex**2, 0.0)


def softmax_rows(mean, var, *, log=False, rng=None, chain=(), spread=0.0, cosine=None):
    """(E, Var) of softmax (log-softmax) of each row of ``mean``/``var`` [R, n] (independent
    Gaussian logits, ``chain`` element-wise functions applied to them first). Masked elements: E = Var = 0 (LogSoftmax: E = mean - E[logsumexp], -inf for -inf);
    rows masked entirely: 0."""
    mean = np.asarray(mean, dtype=np.float64)
    var = np.broadcast_to(np.asarray(var, dtype=np.float64), mean.shape)
    if not chain and mean.shape[0] > _ROW_BLOCK and var.max(initial=0.0) <= CLOSED_FORM_MAX_VAR:
        # closed form only (no row can be sampled), row by row: blocks of rows whose
        # temporaries stay in cache, the same values (every step is per row)
        ex, vx = np.empty(mean.shape), np.empty(mean.shape)
        for i in range(0, mean.shape[0], _ROW_BLOCK):
            ex[i:i + _ROW_BLOCK], vx[i:i + _ROW_BLOCK] = softmax_rows(
                mean[i:i + _ROW_BLOCK], var[i:i + _ROW_BLOCK], log=log)
        return ex, vx
    rel, masked, empty = _relative(mean)
    var = np.where(masked, 0.0, var)
    if chain:
        sampled = ~empty
    else:
        sampled = (var.max(axis=1) > CLOSED_FORM_MAX_VAR) & ~empty
    closed = ~sampled & ~empty
    ex = np.zeros(mean.shape)
    vx = np.zeros(mean.shape)
    if closed.any():
        ex[closed], vx[closed] = _closed_form(rel[closed], var[closed], masked[closed], log)
    if sampled.any():
        rng = rng if rng is not None else np.random.default_rng(0)
        # an element-wise chain is not shift-invariant: it starts from the unshifted logits
        start = np.where(masked, -np.inf, mean) if chain else rel
        ex[sampled], vx[sampled] = _monte_carlo(start[sampled], var[sampled], masked[sampled],
                                                log, rng, chain, spread, cosine)
    vx = np.where(masked, 0.0, vx)
    if not log:
        # identically distributed entries: E = 1/(entries not masked) exactly, by symmetry
        if not chain:
            count = np.maximum((~masked).sum(axis=1, keepdims=True), 1)
            same = _identical(rel, var, masked)[:, None]
            ex = np.where(same, 1.0 / count, ex)
            vx = np.where(same & ~masked, vx.sum(axis=1, keepdims=True) / count, vx)
        return np.where(masked, 0.0, ex), vx
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        lse = np.log(np.where(masked, 0.0, np.exp(rel + var / 2)).sum(axis=1, keepdims=True))
        top = np.max(np.where(masked, -np.inf, mean), axis=1, keepdims=True)
        far = np.where(np.isfinite(mean), mean - top - lse, -np.inf)
    ex = np.where(masked, far, ex)
    return np.where(empty[:, None], 0.0, ex), vx


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


def _over_rows(rows, cov, log: bool, ctx: RuleContext, rank: int, spread: float = 0.0) -> Moments:
    """Softmax of each row of ``Moments.rows`` (masks.keep_rows), pooled over the rows per
    position of the softmax axis: E_k = sum_r w_r E_rk, Var_k = sum_r w_r (Var_rk + E_rk^2)
    - E_k^2."""
    mean, var = rows.mean, rows.var
    if cov is not None:
        var = var * np.diag(cov)
        var = np.maximum(var - _shared(mean, var, cov)[:, None], 0.0)
    um, uv, inverse = _unique_rows(mean, var)
    e, v = softmax_rows(um, uv, log=log, rng=ctx.rng(), spread=spread, cosine=cosine_dim(ctx))
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


def _shared(mean: np.ndarray, var: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Per row [R]: the covariance common to its unmasked logits, ``mean_{k != l} Cov``, from
    the row's variance scale and the key covariance (a softmax ignores it)."""
    rel, masked, _ = _relative(mean)
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
    form = None if log or not last or (x.source is not None and x.source.chain) else row_form(
        ctx, x, shape)
    if form is not None:  # keys of a linear form of fixed vectors (fixed_forms.py)
        e, v = joint_rows(form, ctx.rng(), _MC_DRAWS, _MC_MIN, MASK_GAP)
        return [compressed(e.reshape(shape), v.reshape(shape))]
    prepared = _rows(x, ctx)
    if isinstance(prepared, Moments):
        return [prepared]
    mean, var, cov, chain, (perm, outer_grid, inner_grid) = prepared
    factor = _joint_factor(cov, chain, log)
    spread = row_spread(ctx) if not chain else 0.0
    if factor is not None:  # keys correlated unevenly (key_groups.py): sampled jointly
        um, uv, inverse = _unique_rows(mean, var)
        rel, masked, empty = _relative(um)
        e, v = correlated_rows(rel, np.where(masked, 0.0, uv), masked, factor, ctx.rng(),
                               _MC_DRAWS, _MC_MIN, scales=draw_scales(spread))
        gone = masked | empty[:, None]
        e, v = np.where(gone, 0.0, e)[inverse], np.where(gone, 0.0, v)[inverse]
    else:
        shared = _shared(mean, var, cov) if cov is not None else None
        if shared is not None:
            var = np.maximum(var - shared[:, None], 0.0)
        um, uv, inverse = _unique_rows(mean, var)
        e, v = softmax_rows(um, uv, log=log, rng=ctx.rng(), chain=chain, spread=spread,
                            cosine=None if chain else cosine_dim(ctx))
        e, v = e[inverse], v[inverse]
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
    rel, masked, empty = _relative(um)
    weights = np.where(empty, 0.0, weights)
    if weights.sum() <= 0:
        return None
    _, _, joint = correlated_rows(rel, np.where(masked, 0.0, uv), masked, factor, sctx.rng(),
                                  0, COVARIANCE_DRAWS, weights / weights.sum(),
                                  scales=draw_scales(row_spread(replace(sctx, known=ctx.known))))
    return joint


__all__ = ["CLOSED_FORM_MAX_VAR", "MASK_GAP", "probability_covariance", "softmax", "softmax_rows"]
