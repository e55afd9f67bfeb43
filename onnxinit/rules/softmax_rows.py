"""Softmax (LogSoftmax) of rows of Gaussian logits: the closed form and the Monte Carlo path
that :mod:`.softmax`'s rule runs on each row (that module's docstring has the formulas: the
Fenton-Wilkinson log-normal of the other entries' sum, a 16-node Gauss-Hermite integral of the
sigmoid; rows of logit variance above ``CLOSED_FORM_MAX_VAR`` or of an element-wise chain
sampled, every row at the same cost), masks (``MASK_GAP``) and rows of identical entries."""

from __future__ import annotations

import numpy as np

from .logit_law import cosine_deviates, cosine_of, row_scales

_GH_Z, _GH_W = np.polynomial.hermite_e.hermegauss(16)  # 3e-7 of the variance (sigmoid is smooth)
_GH_W = _GH_W / _GH_W.sum()
CLOSED_FORM_MAX_VAR = 1.0  # logit variance up to which the closed form is used
MASK_GAP = 1000.0  # an element this far below its row's largest mean has probability 0
MC_DRAWS = 1 << 21  # logits drawn per node by the Monte Carlo path (in all)
MC_MIN = 400  # draws per row at least
# the same where every row is sampled for its law (keys of normalized rows, normalised_keys.py):
# rows the closed form would take, whose pooled variance needs fewer draws (Keras' vit_cls
# analysed in 0.47 s of CPU on main, 0.67 s at MC_DRAWS, 0.45 s at these; its softmaxes'
# variance moved 0.3%, those of tests/rules/test_normalised_keys.py 0.2-1.6%)
LAW_DRAWS, LAW_MIN = 1 << 19, 128
# row elements x draws evaluated at once by the Monte Carlo path: the same draws in the same
# order at any size (one generator stream), only the partial sums' grouping moves (5e-14
# relative); cache-sized temporaries, where 1 << 21 took 63 ms for 2^21 draws, this 47 ms
_CHUNK = 1 << 16
# row elements x quadrature nodes evaluated at once by the closed form: its temporaries stay in
# cache (GPT-2's 12 attention softmaxes: 1.0-1.2 s of CPU at 1 << 21, 0.85-0.88 s at this)
_CLOSED_CHUNK = 1 << 15
# rows of a closed-form-only softmax evaluated at once: its some thirty passes then stay in
# cache (GPT-2's 1536 x 128 attention rows: 24 -> 19 ms a node)
_ROW_BLOCK = 128


def relative(mean: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def _monte_carlo(rel, var, masked, log, rng, chain=(), spread=0.0, cosine=None,
                 budget=(MC_DRAWS, MC_MIN)):
    """Sampled E and Var per element of rows [R, n] (masked elements excluded); ``spread`` > 0:
    each draw's deviations scaled by ``sqrt(g)``, g of mean 1 and squared coefficient of
    variation ``spread`` (:func:`row_scales`); ``cosine`` (d): the deviations drawn from the
    cosine law of unit rows of d features (:func:`cosine_deviates`) instead of the Gaussian;
    ``budget``: (draws in all, draws per row at least)."""
    rows, n = rel.shape
    count = max(budget[1], budget[0] // max(1, rows * n))
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


def softmax_rows(mean, var, *, log=False, rng=None, chain=(), spread=0.0, cosine=None,
                 sample=False):
    """(E, Var) of softmax (log-softmax) of each row of ``mean``/``var`` [R, n] (independent
    Gaussian logits, ``chain`` element-wise functions applied to them first; ``cosine``: their
    deviations of the cosine law of d, where sampled; ``sample``: every row sampled). Masked elements: E = Var = 0 (LogSoftmax: E = mean - E[logsumexp], -inf for -inf);
    rows masked entirely: 0."""
    mean = np.asarray(mean, dtype=np.float64)
    var = np.broadcast_to(np.asarray(var, dtype=np.float64), mean.shape)
    if (not chain and not sample and mean.shape[0] > _ROW_BLOCK
            and var.max(initial=0.0) <= CLOSED_FORM_MAX_VAR):
        # closed form only (no row can be sampled), row by row: blocks of rows whose
        # temporaries stay in cache, the same values (every step is per row)
        ex, vx = np.empty(mean.shape), np.empty(mean.shape)
        for i in range(0, mean.shape[0], _ROW_BLOCK):
            ex[i:i + _ROW_BLOCK], vx[i:i + _ROW_BLOCK] = softmax_rows(
                mean[i:i + _ROW_BLOCK], var[i:i + _ROW_BLOCK], log=log)
        return ex, vx
    rel, masked, empty = relative(mean)
    var = np.where(masked, 0.0, var)
    if chain or sample:
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
                                                log, rng, chain, spread, cosine,
                                                (LAW_DRAWS, LAW_MIN) if sample else
                                                (MC_DRAWS, MC_MIN))
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


__all__ = ["CLOSED_FORM_MAX_VAR", "MASK_GAP", "MC_DRAWS", "MC_MIN", "relative", "softmax_rows"]
