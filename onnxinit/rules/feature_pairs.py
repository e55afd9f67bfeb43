"""Correlation between the features of one row (the elements along a tensor's last axis that
share every other index: the features of one token), carried beside the moments.

The rules treat a row's features as independent, which is right for their variances but not
for a statistic over the row: a mean over features of squares (RMSNorm's and LayerNorm's mean
square) has ``Var[mean_d z_d] = (1/D^2) (sum_d Var z_d + sum_{d!=e} Cov(z_d, z_e))``. A dense
layer ``y = W^T x`` makes its outputs correlated even for independent inputs, ``C_y = W^T C_x
W``, with correlations of order ``1/sqrt(K)`` and random sign: the signed mean over pairs stays
near 0, but the squares add up, and for a Gaussian ``Cov(y_d^2, y_e^2) = 2 C_de^2``. Over a
row of D features these ``D^2`` squared correlations of ``1/K`` double the variance of the mean
square of a square layer's output (a transformer's attention and MLP outputs, the residual
stream built from them: Llama's RMSNorm mean square 0.7-0.9x of measured without them).

:class:`Pairs` keeps two numbers per tensor: ``signed``, the mean of ``Corr(x_d, x_e)`` over
pairs ``d != e`` of a row, and ``squared``, the mean of its square. :func:`carry` maps them
through each node after its rule (absent: independent features, 0 and 0):

* dense layers (MatMul/Gemm with a constant 2-D weight ``W[K, N]``): ``C_y = W^T C_x W`` with
  ``C_x`` described by its normalised traces ``a_1 = tr C_x / K``, ``a_2 = tr C_x^2 / K`` and
  ``B = W W^T`` by ``b_1, b_2`` likewise; ``C_x`` and ``B`` in generic position (free):
  ``tr C_y^2 = K (a_2 b_1^2 + a_1^2 b_2 - a_1^2 b_1^2)``, whose off-diagonal part gives
  ``squared``; ``signed`` from ``1^T C_y 1 = u^T C_x u``, ``u = W 1``;
* layout ops (Reshape, Transpose keeping the last axis, Slice, Gather, Concat, Split, Expand,
  Squeeze, Unsqueeze), per-feature affine maps (a constant added, multiplied, divided by),
  products by a per-row scalar (RMSNorm's ``x * 1/rms``) and products ``P V`` (the row is V's)
  keep them;
* a sum of two independent signals: ``C = C_a + C_b``: ``signed = (s_a v_a + s_b v_b) / (v_a +
  v_b)``, ``squared = (q_a v_a^2 + q_b v_b^2 + 2 s_a s_b v_a v_b) / (v_a + v_b)^2`` (v the mean
  variance of each);
* an element-wise function f of one signal (Pow, Sqrt, 1/x, GELU, SiLU...), Mehler:
  ``Cov(f(x_d), f(x_e)) = sum_n c_n^2 rho^n`` with the Hermite coefficients of f at the pooled
  moments, so ``signed = (c_1^2 s + c_2^2 q) / Var f`` and ``squared = (c_1^4 q + 3 c_2^4 q^2)
  / Var f^2``;
* a product of two independent signals ``a b``: ``Cov = C_a C_b + C_a mu_b^2 + C_b mu_a^2``;
* ReduceMean/ReduceSum over the last axis alone reads ``signed``: the rule's variance times
  ``1 + signed ((sum_d sqrt(V_d))^2 - sum_d V_d) / sum_d V_d``.

Every other op ends them (independent features).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from weakref import WeakKeyDictionary

import numpy as np

from ..moments import Moments
from .context import RuleContext, RuleError
from .elementwise import elementwise
from .fusion import fused_function
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


_NONE = Pairs(0.0, 0.0)
_NORMS = frozenset(("LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization"))
_LAYOUT = frozenset(("Reshape", "Slice", "Gather", "Concat", "Split", "Expand", "Squeeze",
                     "Unsqueeze", "Identity", "Dropout", "Cast", "CastLike", "Neg", "Tile"))


def _mean_var(m: Moments | None) -> float:
    return 0.0 if m is None else float(np.mean(m.var))


def _row_vars(m: Moments, d: int) -> np.ndarray:
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


def _dense(x: Pairs, xm: Moments, w: np.ndarray, ym: Moments) -> Pairs:
    """``y = W^T x`` over the last axis, W [K, N] (free-probability composition)."""
    k, n = w.shape
    if n < 2 or k < 1:
        return _NONE
    nu_x = _row_vars(xm, k)
    a1 = float(nu_x.mean())
    if a1 <= 0:
        return _NONE
    a2 = float(np.mean(nu_x**2)) + (k - 1) * a1 * a1 * x.squared
    b1, b2, a_jj = _gram_traces(w)
    tr2 = k * (a2 * b1 * b1 + a1 * a1 * b2 - a1 * a1 * b1 * b1)
    nu_y = _row_vars(ym, n)
    v = float(nu_y.mean())
    if v <= 0:
        return _NONE
    off2 = tr2 - float(np.sum(nu_y**2))
    excess = x.excess
    if x.kurtosis != 0.0:  # independent non-Gaussian inputs: sum_j A_jj^2 k4_j / (tr A C)^2
        excess += x.kurtosis * float(np.sum((a_jj * nu_x) ** 2)) / float(a_jj @ nu_x) ** 2
    u = w.sum(axis=1, dtype=np.float64)
    total = a1 * ((1 - x.signed) * float(u @ u) + x.signed * float(u.sum()) ** 2)
    off = total - float(np.sum(nu_y))
    pairs = n * (n - 1)
    return Pairs(float(np.clip(off / (pairs * v), -1, 1)),
                 float(np.clip(off2 / (pairs * v * v), 0, 1)), float(excess))


def _weight(ctx: RuleContext, inputs) -> np.ndarray | None:
    """W [K, N] of a dense layer over the last axis of its one signal input (input 0), or None."""
    op = ctx.node.op_type
    if inputs[0] is None or (len(inputs) > 1 and inputs[1] is not None):
        return None
    w = ctx.const(1)
    if w is None or np.ndim(w) != 2:
        return None
    if op == "Gemm":
        if ctx.attr("transA", 0):
            return None
        w = w.T if ctx.attr("transB", 0) else w
    return w


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


def _function(x: Pairs, xm: Moments, ctx: RuleContext, f=None) -> Pairs | None:
    """Through an element-wise function of one signal (Mehler, pooled moments); None when the
    node is not one."""
    f = f if f is not None else elementwise(ctx.node, ctx)
    if f is None:
        return None
    mean, var = xm.total()
    if not (np.isfinite(mean) and np.isfinite(var)) or var <= 0:
        return _NONE
    try:
        c, rest = coefficients(f.fn, np.float64(mean), np.float64(var))
    except (ValueError, FloatingPointError, RuleError):
        return _NONE
    if np.ndim(c) != 1:  # a function with per-feature constants: pooled moments do not fit
        return _NONE
    c2 = c[1:] ** 2
    total = float(c2.sum() + rest)
    if total <= 0:
        return _NONE
    q = x.squared
    signed = (c2[0] * x.signed + c2[1] * q) / total
    squared = (c2[0] ** 2 * q + 3 * c2[1] ** 2 * q * q) / total**2
    signed += c2[1] * x.excess / 2 / total  # the square's share of the shared energy
    skew, kurtosis = _shape(f.fn, float(mean), float(var))
    return Pairs(float(signed), float(min(squared, 1.0)), float(x.excess * (c2[0] / total) ** 2),
                 skew, kurtosis)


def _product(a: Pairs, am: Moments, b: Pairs, bm: Moments) -> Pairs:
    """``a b`` of independent signals: ``Cov = C_a C_b + C_a mu_b^2 + C_b mu_a^2``."""
    va, vb = _mean_var(am), _mean_var(bm)
    ma, mb = float(np.mean(am.mean**2)), float(np.mean(bm.mean**2))
    v = va * vb + va * mb + vb * ma
    if v <= 0:
        return _NONE
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


def _sum(a: Pairs, am: Moments, b: Pairs, bm: Moments) -> Pairs:
    va, vb = _mean_var(am), _mean_var(bm)
    v = va + vb
    if v <= 0:
        return _NONE
    signed = (a.signed * va + b.signed * vb) / v
    squared = (a.squared * va * va + b.squared * vb * vb + 2 * a.signed * b.signed * va * vb) / v**2
    excess = (a.excess * va * va + b.excess * vb * vb) / v**2
    skew = (a.skew * va**1.5 + b.skew * vb**1.5) / v**1.5  # cumulants add
    kurtosis = (a.kurtosis * va * va + b.kurtosis * vb * vb) / v**2
    return Pairs(float(signed), float(min(squared, 1.0)), float(excess), float(skew),
                 float(kurtosis))


def _last_dim(ctx: RuleContext, i: int, out: bool = False) -> int | None:
    try:
        shape = ctx.out_shape(i) if out else ctx.in_shape(i)
    except RuleError:
        return None
    return shape[-1] if shape else None


def _keeps_rows(ctx: RuleContext) -> bool:
    """A layout op whose output rows are pieces or unions of the input's rows."""
    op = ctx.node.op_type
    a, b = _last_dim(ctx, 0), _last_dim(ctx, 0, out=True)
    if a is None or b is None:
        return False
    if op == "Transpose":
        perm = ctx.attr("perm")
        rank = len(ctx.in_shape(0))
        return perm is not None and list(perm)[-1] == rank - 1
    if op in ("Gather", "Split", "Slice", "Concat", "Expand", "Tile"):
        return True
    return a % b == 0 or b % a == 0


def _row_mean_factor(z: Pairs, zm: Moments, d: int) -> float:
    """``1 + signed ((sum sqrt V_d)^2 - sum V_d) / sum V_d``: a mean over a row of correlated
    elements, relative to independent ones."""
    v = _row_vars(zm, d)
    s = float(v.sum())
    if s <= 0:
        return 1.0
    return max(1.0 + z.signed * (float(np.sqrt(v).sum()) ** 2 - s) / s, 0.0)


def _reduced_last(ctx: RuleContext) -> int | None:
    """D when the node reduces its input's last axis (size D > 1) and nothing else."""
    try:
        x, y = ctx.in_shape(0), ctx.out_shape(0)
    except RuleError:
        return None
    if not x or x[-1] <= 1:
        return None
    if len(y) == len(x):
        return x[-1] if y[-1] == 1 and tuple(y[:-1]) == tuple(x[:-1]) else None
    return x[-1] if tuple(y) == tuple(x[:-1]) else None


_READERS: WeakKeyDictionary = WeakKeyDictionary()


def _read(graph) -> bool:
    """Whether some node of ``graph`` takes a mean or sum of squares (``Pow``, ``x * x``): the
    only reader of the pairs; without one they are not followed (no cost)."""
    found = _READERS.get(graph)
    if found is None:
        found = False
        for node_id in graph.order:
            node = graph.node(node_id)
            if node.op_type in ("ReduceMean", "ReduceSum") and node.input:
                sq = graph.producer.get(node.input[0])
                sq = graph.node(sq) if sq else None
                if sq is not None and (sq.op_type == "Pow" or (
                        sq.op_type == "Mul" and sq.input[0] == sq.input[1])):
                    found = True
                    break
        _READERS[graph] = found
    return found


def carry(ctx: RuleContext, inputs: list, outputs: list, table: dict) -> tuple[list, list]:
    """(outputs, their Pairs) after the node's rule: ``table`` holds the Pairs known so far
    (by tensor; absent: independent features). A mean over the last axis has its variance
    corrected."""
    if not _read(ctx.graph):
        return outputs, [None] * len(outputs)
    known = [table.get(name) if name else None for name in ctx.node.input]
    node = ctx.node
    op = node.op_type if node.domain in ("", "ai.onnx") else None
    none = [None] * len(outputs)
    signals = [i for i, m in enumerate(inputs) if m is not None]
    pairs = [p if p is not None else _NONE for p in known]
    if op is None or not signals or outputs[0] is None:
        return outputs, none
    first = signals[0]
    p0, m0 = pairs[first], inputs[first]
    if op in ("ReduceMean", "ReduceSum"):
        d = _reduced_last(ctx)
        if d is not None and p0.signed != 0.0:
            f = _row_mean_factor(p0, m0, d)
            m = outputs[0]
            outputs = [replace(m, var=m.var * f, source=None, mixture=None)] + outputs[1:]
        return outputs, none
    if op in ("MatMul", "Gemm"):
        if len(signals) == 2:  # P V: the rows are the right operand's, averaged over tokens
            found = replace(pairs[1], excess=_mixed_excess(inputs[0], inputs[1], pairs[1].excess),
                            skew=0.0, kurtosis=0.0)
            return outputs, [found if found != _NONE else None] + none[1:]
        w = _weight(ctx, inputs)
        if w is None or signals != [0]:
            return outputs, none
        return outputs, [_dense(p0, m0, w, outputs[0])] + none[1:]
    if op in ("Mul", "Div") and len(signals) == 2 and _normalises(ctx):
        return outputs, [_normalised(p0, outputs[0], _last_dim(ctx, 0, out=True))]
    if op in _NORMS:
        return outputs, [_normalised(p0, outputs[0], _last_dim(ctx, 0, out=True))] + none[1:]
    f = ctx.fusion
    if f is not None and len(signals) == 2 and op in ("Add", "Sub", "Mul", "Div", "Pow"):
        t = table.get(f.tensor) or _NONE
        found = _function(t, f.moments, ctx, fused_function(op, f.chain_a, f.chain_b))
        return outputs, [found] + none[1:]
    if all(p == _NONE for p in pairs):
        return outputs, none
    if op in _LAYOUT or op == "Transpose":
        if not _keeps_rows(ctx):
            return outputs, none
        if op == "Concat" and len(signals) > 1:
            p0 = _sum(pairs[signals[0]], inputs[signals[0]], pairs[signals[1]], inputs[signals[1]])
        return outputs, [p0] * len(outputs)
    if op in ("Add", "Sub", "Mul", "Div") and len(signals) == 2:
        a, b = inputs[0], inputs[1]
        da, db = _last_dim(ctx, 0), _last_dim(ctx, 1)
        if node.input[0] == node.input[1]:
            found = _function(p0, m0, ctx) if op == "Mul" else None
            return outputs, [found if found is not None else _square(p0, m0)]
        if op in ("Add", "Sub"):
            return outputs, [_sum(pairs[0], a, pairs[1], b)]
        if db == 1 and (da or 0) > 1:  # times / by a per-row scalar: correlations kept
            return outputs, [pairs[0]]
        if da == 1 and (db or 0) > 1 and op == "Mul":
            return outputs, [pairs[1]]
        if op == "Mul":
            return outputs, [_product(pairs[0], a, pairs[1], b)]
        return outputs, none
    if op in ("Add", "Sub", "Mul") or (op == "Div" and first == 0):
        return outputs, [p0]  # a constant added or multiplied: per-feature affine
    found = _function(p0, m0, ctx)
    if found is not None:
        return outputs, [found] + none[1:]
    return outputs, none


def _mixed_excess(pm: Moments, vm: Moments, excess: float) -> float:
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


def _normalised(x: Pairs, ym: Moments, d: int | None) -> Pairs:
    """A row divided by its own root mean square: ``sum_d y_d^2`` is constant, so ``2 tr C^2 +
    excess (tr C)^2 = 0``: ``excess = -2 (mean(nu^2) / (D mean(nu)^2) + squared (D-1) / D)``."""
    if not d or d < 2:
        return x
    nu = _row_vars(ym, d)
    v = float(nu.mean())
    if v <= 0:
        return x
    return replace(x, excess=-2 * (float(np.mean(nu**2)) / (d * v * v) + x.squared * (d - 1) / d))


def _strip(ctx: RuleContext, name: str) -> str:
    """``name`` before any Cast/Identity producing it."""
    graph = ctx.graph
    for _ in range(4):
        node_id = graph.producer.get(name)
        if not node_id:
            return name
        node = graph.node(node_id)
        if node.op_type not in ("Cast", "Identity", "CastLike"):
            return name
        name = node.input[0]
    return name


def _normalises(ctx: RuleContext) -> bool:
    """The node is ``x * s`` or ``x / s`` with ``s`` a function of the mean over the last axis
    of ``x^2`` alone (RMSNorm and LayerNorm written out: ``x / sqrt(mean(x^2) + eps)``)."""
    graph = ctx.graph
    x_name, s_name = ctx.node.input[0], ctx.node.input[1]
    if ctx.node.op_type == "Mul" and _last_dim(ctx, 0) == 1:
        x_name, s_name = s_name, x_name
    x = _strip(ctx, x_name)
    name = s_name
    for _ in range(8):
        node_id = graph.producer.get(name)
        if not node_id:
            return False
        node = graph.node(node_id)
        signals = [n for n in node.input if n and graph.is_signal(n)]
        if len(signals) != 1 and not (len(signals) == 2 and signals[0] == signals[1]):
            return False
        if node.op_type in ("ReduceMean", "ReduceSum"):
            sq_id = graph.producer.get(signals[0])
            if not sq_id:
                return False
            sq = graph.node(sq_id)
            if sq.op_type == "Pow" or (sq.op_type == "Mul" and sq.input[0] == sq.input[1]):
                return _strip(ctx, sq.input[0]) == x
            return False
        name = signals[0]
    return False


def _square(x: Pairs, xm: Moments) -> Pairs:
    """``x * x``: Hermite coefficients of the square, ``c_1 = 2 mu sqrt(nu)``, ``c_2 = sqrt(2)
    nu``."""
    mean, var = xm.total()
    c1, c2 = 4 * mean * mean * var, 2 * var * var
    total = c1 + c2
    if total <= 0:
        return _NONE
    return Pairs((c1 * x.signed + c2 * (x.squared + x.excess / 2)) / total,
                 min((c1 * c1 * x.squared + 3 * c2 * c2 * x.squared**2) / total**2, 1.0),
                 x.excess * (c1 / total) ** 2)


__all__ = ["Pairs", "carry"]
