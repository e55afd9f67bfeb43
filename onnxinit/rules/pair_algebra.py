"""The algebra of :class:`Pairs`, the correlation between the features of one row carried
beside the moments (:mod:`onnxinit.rules.feature_pairs` follows them through the graph and
states the formulas): how a dense layer, a sum, a product, an element-wise function, a
normalisation and an attention mix ``P V`` change them. Pure functions: Pairs and Moments in,
Pairs out."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..moments import Moments
from ..strict import fall_back
from . import token_excess
from .context import RuleContext, RuleError
from .elementwise import elementwise
from .hermite import coefficients

_Z, _W = np.polynomial.hermite_e.hermegauss(48)
_W = _W / _W.sum()

_PROBES = 8  # random probes for tr((W W^T)^2) of a large weight (Hutchinson)
_EXACT = 1 << 24  # K * N * min(K, N) up to which the Gram matrix is formed exactly


@dataclass(frozen=True)
class Pairs:
    """Mean correlation (``signed``) and mean squared correlation (``squared``) of two distinct
    elements of one row along the last axis."""

    signed: float
    squared: float
    # excess of the row's energy over a Gaussian's: Var[x^T A x] = 2 tr((A C)^2) + excess
    # (tr A C)^2 for any A (a dense layer keeps it); -2/D (1 + (D-1) squared) for a
    # normalised row (RMSNorm, LayerNorm: its mean square is constant)
    excess: float = 0.0
    # the marginal shape of one element (pooled): skewness and excess kurtosis; a dense layer
    # turns the inputs' kurtosis into excess energy of its outputs (``sum_j A_jj^2 k4_j``)
    skew: float = 0.0
    kurtosis: float = 0.0
    # the row's mean vector against its covariance: ``mu^T C mu`` over its independent-features
    # part ``sum mu_d^2 nu_d`` (and the pooled mean's ``mean(mu)^2 1^T C_off 1``), relative to
    # ``sum mu_d^2 nu_d``: a dense layer's mean ``W^T mu_x`` lies along its own covariance
    # ``W^T C_x W`` (:func:`mean_alignment`); a mean of squares reads it
    mean_cross: float = 0.0
    # the excess token by token where a norm normalises some tokens and scales others:
    # ((relative variance r_t, excess e_t), ...), ``excess`` their pooled value (token_excess.py)
    token_excess: tuple = ()


NONE = Pairs(0.0, 0.0)


def _mean_var(m: Moments | None) -> float:
    return 0.0 if m is None else float(np.mean(m.var))


def row_vars(m: Moments, d: int) -> np.ndarray:
    """Per-feature variances (the other axes pooled) along a last axis of ``d`` features."""
    var = np.asarray(m.var)
    if var.ndim == 0 or var.shape[-1] != d:
        return np.full(d, float(np.mean(var)))
    return var.reshape(-1, d).mean(axis=0)


def _gram_traces(w: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(b_1, b_2, diag B) = (tr B / K, tr B^2 / K, B_jj) for ``B = W W^T``, W [K, N] in its own
    dtype: ``tr B^2`` exactly when small, else by Hutchinson's estimator ``E ||B g||^2`` over
    seeded Rademacher probes (relative error about ``sqrt(2 / (K probes))``)."""
    k, n = w.shape
    diag = np.square(w).sum(axis=1, dtype=np.float64)
    b1 = float(diag.sum()) / k
    if k * n * min(k, n) <= _EXACT:
        w64 = np.asarray(w, dtype=np.float64)
        g = w64.T @ w64 if n <= k else w64 @ w64.T
        return b1, float(np.sum(g * g)) / k, diag
    probes = np.random.default_rng(0).choice((-1.0, 1.0), size=(k, _PROBES)).astype(w.dtype)
    bg = np.asarray(w @ (w.T @ probes), dtype=np.float64)
    return b1, float(np.sum(bg * bg)) / (_PROBES * k), diag


def _independent_trace(w: np.ndarray, nu_x: np.ndarray) -> float | None:
    """``tr C_y^2`` of ``C_y = W^T diag(nu_x) W`` exactly, for uncorrelated inputs of unequal
    variances (the free composition is exact only for equal ones: a pointwise Conv after a
    depthwise one reads channels whose variances spread as a chi-square of the taps, 0.8-1.3x
    at 16 channels); None where the Gram matrix is too large to form."""
    k, n = w.shape
    if k * n * min(k, n) > _EXACT:
        return None
    a = np.sqrt(nu_x)[:, None] * np.asarray(w, dtype=np.float64)
    g = a.T @ a if n <= k else a @ a.T
    return float(np.sum(g * g))


def dense(x: Pairs, xm: Moments, w: np.ndarray, ym: Moments) -> Pairs:
    """``y = W^T x`` over the last axis, W [K, N] (free-probability composition)."""
    k, n = w.shape
    if n < 2 or k < 1:
        return NONE
    nu_x = row_vars(xm, k)
    a1 = float(nu_x.mean())
    if a1 <= 0:
        return NONE
    a2 = float(np.mean(nu_x**2)) + (k - 1) * a1 * a1 * x.squared
    b1, b2, a_jj = _gram_traces(w)
    tr2 = _independent_trace(w, nu_x) if x.squared == 0.0 else None
    if tr2 is None:
        tr2 = k * (a2 * b1 * b1 + a1 * a1 * b2 - a1 * a1 * b1 * b1)
    nu_y = row_vars(ym, n)
    v = float(nu_y.mean())
    if v <= 0:
        return NONE
    off2 = tr2 - float(np.sum(nu_y**2))
    excess = x.excess
    own = x.kurtosis - scale_kurtosis(x.excess, a2 / (k * a1 * a1))
    if own != 0.0:  # independent non-Gaussian inputs: sum_j A_jj^2 k4_j / (tr A C)^2
        excess += own * float(np.sum((a_jj * nu_x) ** 2)) / float(a_jj @ nu_x) ** 2
    u = w.sum(axis=1, dtype=np.float64)
    total = a1 * ((1 - x.signed) * float(u @ u) + x.signed * float(u.sum()) ** 2)
    off = total - float(np.sum(nu_y))
    pairs = n * (n - 1)
    return Pairs(float(np.clip(off / (pairs * v), -1, 1)),
                 float(np.clip(off2 / (pairs * v * v), 0, 1)), float(excess),
                 kurtosis=scale_kurtosis(excess, tr2 / (n * v) ** 2),
                 mean_cross=mean_alignment(xm, w, nu_x, ym, off),
                 token_excess=token_excess.shifted(x.token_excess, excess - x.excess))


def mean_energy(m: Moments | None) -> float:
    """``mean(mu^2 nu)`` over the elements: a row's ``sum_d mu_d^2 nu_d / D``."""
    if m is None:
        return 0.0
    mean, var = np.broadcast_arrays(np.asarray(m.mean, np.float64), np.asarray(m.var, np.float64))
    found = float(np.mean(mean * mean * var)) if mean.size else 0.0
    return found if np.isfinite(found) else 0.0


def shifted(x: Pairs, xm: Moments, ym: Moments) -> Pairs:
    """``x + b``, b constant: the covariance and ``mu^T C mu``'s aligned part are kept (b taken
    as random against C), ``mean_cross`` rescaled to the new base ``sum mu_d^2 nu_d``."""
    if not x.mean_cross:
        return x
    base = mean_energy(ym)
    cross = x.mean_cross * mean_energy(xm) / base if base > 0 else 0.0
    return replace(x, mean_cross=float(cross) if np.isfinite(cross) else 0.0)


def mean_alignment(xm: Moments, w: np.ndarray, nu_x: np.ndarray, ym: Moments,
                   off: float) -> float:
    """``(mu^T C_y mu - sum_n mu_n^2 nu_n - mean(mu)^2 off) / sum_n mu_n^2 nu_n`` for ``y = W^T
    x``, ``mu = W^T mu_x`` per row of x's means (a bias added after is taken as random
    against C_y), ``C_y = W^T diag(nu_x) W``: ``mu^T C_y mu = sum_k (W mu)_k^2 nu_k``. The mean
    of a ReLU layer's outputs is ``c 1``, and ``W^T c 1`` lies along ``W^T W``'s large
    eigenvectors: ``c^T B^2 c / (c^T B c tr B / N) = 1 + N / K`` for a random W (``B = W
    W^T``; ``B c`` keeps ``c`` times ``B``'s diagonal).
    ``off`` the row's off-diagonal covariance sum ``1^T C_y 1 - sum nu``. 0 for zero means."""
    k, n = w.shape
    mean = np.asarray(xm.mean, np.float64)
    if not mean.size or not np.any(mean):
        return 0.0
    rows = (np.broadcast_to(mean, mean.shape[:-1] + (k,)) if mean.ndim and mean.shape[-1] in (1, k)
            else np.full((1, k), float(np.mean(mean))))
    rows = rows.reshape(-1, k)
    if rows.shape[0] > 4096:
        return 0.0  # per-element means over a large grid: left out
    w = np.asarray(w, np.float64)
    mu = rows @ w  # [rows, N]
    nu_y = row_vars(ym, n)
    base = float(np.mean(np.sum(mu * mu * nu_y, axis=1)))
    if not base > 0:
        return 0.0
    aligned = float(np.mean(np.sum(np.square(mu @ w.T) * nu_x, axis=1)))
    pooled = float(np.mean(np.mean(mu, axis=1) ** 2)) * off
    found = (aligned - base - pooled) / base
    return float(found) if np.isfinite(found) else 0.0


def scale_kurtosis(excess: float, q: float) -> float:
    """The excess kurtosis each element of a row gets from the row's shared scale: the row as
    ``s z`` (z Gaussian of concentration ``q = tr C^2 / (tr C)^2``, ``E s^2 = 1``), its energy's
    relative variance ``(1 + e_s) (1 + 2 q) - 1 = 2 q + excess``, so ``e_s = excess / (1 + 2
    q)``, and a projection ``w . x = s (w . z)`` has kurtosis ``3 e_s`` (negative for a
    normalised row: ``-6 q / (1 + 2 q)``, a point on a sphere). Part of :class:`Pairs`'
    ``kurtosis`` (the marginal shape); a dense layer counts only the rest as its inputs' own,
    independent, fourth cumulants."""
    if not np.isfinite(excess) or not q >= 0:
        return 0.0
    return 3.0 * excess / (1.0 + 2.0 * q)


def _shape(fn, mean: float, var: float) -> tuple[float, float]:
    """(skewness, excess kurtosis) of ``fn(z)``, ``z ~ N(mean, var)`` (Gauss-Hermite)."""
    with np.errstate(all="ignore"):
        y = np.asarray(fn(mean + np.sqrt(var) * _Z), dtype=np.float64)
    if y.shape != _Z.shape or not np.all(np.isfinite(y)):
        return 0.0, 0.0
    c = y - _W @ y
    m2 = float(_W @ c**2)
    if m2 <= 0:
        return 0.0, 0.0
    return float(_W @ c**3) / m2**1.5, float(_W @ c**4) / m2**2 - 3.0


def through_function(x: Pairs, xm: Moments, ctx: RuleContext, f=None) -> Pairs | None:
    """Through an element-wise function of one signal (Mehler, pooled moments); None when the
    node is not one."""
    f = f if f is not None else elementwise(ctx.node, ctx)
    if f is None:
        return None
    mean, var = xm.total()
    if not (np.isfinite(mean) and np.isfinite(var)) or var <= 0:
        return NONE
    try:
        c, rest = coefficients(f.fn, np.float64(mean), np.float64(var))
    except (ValueError, FloatingPointError, RuleError) as exc:
        fall_back(exc, (FloatingPointError, RuleError,))
        return NONE
    if np.ndim(c) != 1:  # a function with per-feature constants: pooled moments do not fit
        return NONE
    c2 = c[1:] ** 2
    total = float(c2.sum() + rest)
    if total <= 0:
        return NONE
    q = x.squared
    signed = (c2[0] * x.signed + c2[1] * q) / total
    squared = (c2[0] ** 2 * q + 3 * c2[1] ** 2 * q * q) / total**2
    signed += c2[1] * x.excess / 2 / total  # the square's share of the shared energy
    skew, kurtosis = _shape(f.fn, float(mean), float(var))
    linear = (c2[0] / total) ** 2  # the share of the input's fourth cumulant the output keeps
    excess = x.excess * linear
    d = _out_features(ctx)
    q_x, q_y = (concentration(p, d) for p in (x.squared, squared))
    kurtosis += (x.kurtosis - scale_kurtosis(x.excess, q_x)) * linear  # the inputs' own
    kurtosis += scale_kurtosis(excess, q_y)  # the row's shared scale, kept
    return Pairs(float(signed), float(min(squared, 1.0)), float(excess), skew, float(kurtosis))


def _out_features(ctx: RuleContext) -> int:
    try:
        shape = ctx.out_shape(0)
    except RuleError:
        return 0
    return int(shape[-1]) if shape and shape[-1] else 0


def concentration(squared: float, d: int) -> float:
    """``q`` of a row of d equal-variance features of mean squared correlation ``squared``
    (``squared`` alone when d is unknown): :func:`.shared_row.row_concentration`'s case of
    equal variances, where the variances are not at hand."""
    return squared if d < 1 else 1.0 / d + squared * (d - 1) / d


def product(a: Pairs, am: Moments, b: Pairs, bm: Moments) -> Pairs:
    """``a b`` of independent signals: ``Cov = C_a C_b + C_a mu_b^2 + C_b mu_a^2``."""
    va, vb = _mean_var(am), _mean_var(bm)
    ma, mb = float(np.mean(am.mean**2)), float(np.mean(bm.mean**2))
    v = va * vb + va * mb + vb * ma
    if v <= 0:
        return NONE
    signed = (a.signed * b.signed * va * vb + a.signed * va * mb + b.signed * vb * ma) / v
    squared = (a.squared * b.squared * (va * vb) ** 2 + a.squared * (va * mb) ** 2
               + b.squared * (vb * ma) ** 2) / v**2
    skew, kurtosis = _product_shape(a, am, b, bm)
    return Pairs(float(signed), float(min(squared, 1.0)), 0.0, skew, kurtosis)


def _raw(p: Pairs, m: Moments) -> np.ndarray:
    """E[x^k], k = 1..4, from the pooled mean, variance, skewness and kurtosis."""
    mu, nu = m.total()
    sd = np.sqrt(max(nu, 0.0))
    m3, m4 = p.skew * sd**3, (3 + p.kurtosis) * nu * nu
    return np.array([mu, mu * mu + nu, mu**3 + 3 * mu * nu + m3,
                     mu**4 + 6 * mu * mu * nu + 4 * mu * m3 + m4])


def _product_shape(a: Pairs, am: Moments, b: Pairs, bm: Moments) -> tuple[float, float]:
    """Skewness and kurtosis of ``a b`` for independent ``a``, ``b`` (raw moments multiply)."""
    r = _raw(a, am) * _raw(b, bm)
    mu = r[0]
    var = r[1] - mu * mu
    if not var > 0:
        return 0.0, 0.0
    m3 = r[2] - 3 * mu * r[1] + 2 * mu**3
    m4 = r[3] - 4 * mu * r[2] + 6 * mu * mu * r[1] - 3 * mu**4
    return float(m3 / var**1.5), float(m4 / var**2 - 3)


def independent_sum(a: Pairs, am: Moments, b: Pairs, bm: Moments, aligned: bool = False
                    ) -> Pairs:
    """The Pairs of ``a + b``, independent signals: ``C = C_a + C_b``, the two correlation
    patterns in generic position; ``aligned``: one pattern R (:mod:`.pair_origin`: P V and V),
    ``C = (v_a + v_b) R``, whose correlations are R's."""
    va, vb = _mean_var(am), _mean_var(bm)
    v = va + vb
    if not 0 < v < np.inf:
        return NONE
    ra, rb = va / v, vb / v  # shares of the variance: squares of variances overflow past 1e154
    signed = a.signed * ra + b.signed * rb
    squared = a.squared * ra * ra + b.squared * rb * rb + 2 * a.signed * b.signed * ra * rb
    if aligned:  # each operand's correlations R (shares of a mean when they differ)
        squared = a.squared * ra + b.squared * rb
    excess = a.excess * ra * ra + b.excess * rb * rb
    skew = a.skew * ra**1.5 + b.skew * rb**1.5  # cumulants add
    kurtosis = a.kurtosis * ra * ra + b.kurtosis * rb * rb
    cross = 0.0
    if a.mean_cross or b.mean_cross:  # the aligned energies add, the base is the sum's
        ea, eb = mean_energy(am), mean_energy(bm)
        try:
            mean, var = np.broadcast_arrays(np.asarray(am.mean) + np.asarray(bm.mean),
                                            np.asarray(am.var) + np.asarray(bm.var))
            base = float(np.mean(mean * mean * var))
        except ValueError:  # rows put side by side (Concat): their energies add
            base = ea + eb
        if base > 0:
            cross = (a.mean_cross * ea + b.mean_cross * eb) / base
    return Pairs(float(signed), float(min(squared, 1.0)), float(excess), float(skew),
                 float(kurtosis), float(cross) if np.isfinite(cross) else 0.0)


def row_mean_factor(z: Pairs, zm: Moments, d: int) -> float:
    """``1 + signed ((sum sqrt V_d)^2 - sum V_d) / sum V_d``: a mean over a row of correlated
    elements, relative to independent ones."""
    v = row_vars(zm, d)
    s = float(v.sum())
    if s <= 0:
        return 1.0
    return max(1.0 + z.signed * (float(np.sqrt(v).sum()) ** 2 - s) / s, 0.0)


def mixed_excess(pm: Moments, vm: Moments, excess: float) -> float:
    """The energy excess of ``P V``'s rows: row t mixes V's rows with weights ``w = E[P_t]``.
    V's rows as a part shared by all (the mean off-diagonal correlation f of the token field,
    over the rows mixed) and independent parts, each with V's excess: ``excess (f^2 (sum w)^4 +
    (1 - f)^2 sum w^4) / (f (sum w)^2 + (1 - f) sum w^2)^2``, pooled over the rows by their
    variance squared. 0 when P's means are not a token-by-token matrix."""
    if excess == 0.0:
        return 0.0
    mean = np.asarray(pm.mean, dtype=np.float64)
    if mean.ndim < 2 or mean.shape[-1] != mean.shape[-2] or mean.shape[-1] < 2:
        return 0.0
    n = mean.shape[-1]
    w = np.where(np.isfinite(mean), mean, 0.0).reshape(-1, n, n).mean(axis=0)
    t = vm.tokens
    if t is not None and t.n == n and t.axis == -2 and t.span == 1 and t.stride == 1:
        d = np.sqrt(np.maximum(np.diag(t.cov), 1e-300))
        r = t.cov / np.outer(d, d)
    else:
        r = np.eye(n)
    s1, s2, s4 = w.sum(axis=1), (w * w).sum(axis=1), (w**4).sum(axis=1)
    var = np.einsum("ts,su,tu->t", w, r, w)
    f = np.clip((var - s2) / np.maximum(s1 * s1 - s2, 1e-300), 0.0, 1.0)
    per_row = (f * f * s1**4 + (1 - f) ** 2 * s4) / np.maximum(f * s1 * s1 + (1 - f) * s2,
                                                              1e-300) ** 2
    weight = var * var
    return float(excess * (per_row * weight).sum() / max(float(weight.sum()), 1e-300))


def normalised(x: Pairs, ym: Moments, d: int | None, kept: float = 0.0,
               tokens: tuple | None = None) -> Pairs:
    """A row divided by its own root mean square: ``sum_d y_d^2`` is constant, so ``2 tr C^2 +
    excess (tr C)^2 = 0``: ``excess = -2 q``, ``q = mean(nu^2) / (D mean(nu)^2) + squared (D-1)
    / D``. ``kept`` (``E[rho^2]``, :func:`.row_norm.normalisation_degree`): the share of the
    row's relative energy variance ``2 q + excess_x`` the norm keeps (eps dominating a small
    row), ``excess = kept (2 q + excess_x) - 2 q``. The energy's part along the mean, ``4 (mu^T
    C mu - sum mu_d^2 nu_d)``, is fixed with the rest: ``mean_cross`` keeps the share ``kept``
    (a whole normalised row has ``Var sum y^2 = 0`` whatever its mean). ``tokens``: (the
    output's per-token variances, each token's ``kept``) where the norm's mean square is
    spelled out per token: the excess token by token, pooled (:mod:`.token_excess`)."""
    if not d or d < 2:
        return x
    nu = row_vars(ym, d)
    v = float(nu.mean())
    if v <= 0:
        return x
    q = float(np.mean(nu**2)) / (d * v * v) + x.squared * (d - 1) / d
    excess = kept * (2 * q + x.excess) - 2 * q
    found = token_excess.normalised(*tokens, q, x.token_excess, x.excess) if tokens else ()
    excess = token_excess.pooled(found, excess)
    own = x.kurtosis - scale_kurtosis(x.excess, q)
    return replace(x, excess=excess, kurtosis=own + scale_kurtosis(excess, q),
                   mean_cross=kept * x.mean_cross, token_excess=found)


def square(x: Pairs, xm: Moments) -> Pairs:
    """``x * x``: Hermite coefficients of the square, ``c_1 = 2 mu sqrt(nu)``, ``c_2 = sqrt(2)
    nu``."""
    mean, var = xm.total()
    c1, c2 = 4 * mean * mean * var, 2 * var * var
    total = c1 + c2
    if total <= 0:
        return NONE
    return Pairs((c1 * x.signed + c2 * (x.squared + x.excess / 2)) / total,
                 min((c1 * c1 * x.squared + 3 * c2 * c2 * x.squared**2) / total**2, 1.0),
                 x.excess * (c1 / total) ** 2)


__all__ = ["NONE", "Pairs", "concentration", "dense", "independent_sum", "mean_alignment",
           "mean_energy",
           "mixed_excess", "normalised", "product",
           "row_mean_factor", "row_vars", "scale_kurtosis", "shifted", "square",
           "through_function"]
