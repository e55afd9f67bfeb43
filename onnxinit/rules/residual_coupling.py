"""The covariance of a residual sum's two operands, ``x = h + f(h)``, when the branch f is
computed from the skip h row by row (a token's features; pre-norm: f = MLP(LayerNorm(h)),
post-norm: f = MLP(h) with h a LayerNorm's output), for the sum's field
(:func:`.channel_covariance.covariance`; the operands were taken as independent).

For a Gaussian row h (covariance ``S_h``), Stein's lemma gives ``Cov(h, f(h)) = S_h E[J_f]^T``
(``J_f`` the Jacobian of f). Carried forward from ``K = S_h`` along the branch, with each op's
expected Jacobian:

- a dense layer ``y = x W`` (MatMul by a constant ``W [D, E]``): ``K W``;
- a per-feature constant added (a bias) or multiplied: ``K diag(c)`` (1 for a sum);
- an element-wise function phi of u (a GELU, written as one or fused from its nodes):
  ``K diag(E phi'(u_i))``, the mean slope per feature for u Gaussian with its moments
  (``E phi'(u) = a_1 / sd``, phi's first Hermite amplitude);
- rows centred on their mean (``x - mean(x)``): ``K P``, ``P = I - 1 1^T / D``;
- a LayerNorm of x, ``y = g P x / sigma(x)``, ``sigma^2 = x^T P x / D``:
  ``J = diag(g) (P - P x x^T P / (D sigma^2)) / sigma``, whose mean at x ~ N(0, C) is
  ``diag(a) (P - P C P / tr(P C P))`` with ``a_d = g_d / sigma_bar`` read as
  ``sqrt(Var y_d / (P C P)_dd)`` (the row's radius taken as independent of its direction;
  C x's covariance carried from S_h, else x's variances), so ``K (P - P C P / tr(P C P))
  diag(a)``;
- a layout op that keeps the last axis (the Reshape to ``[N T, D]`` and back): K;
- a self-attention's output merged over heads, its queries, keys and values dense layers of
  x: ``K B`` with ``E[o_t | x_t] = x_t B`` (:mod:`.attention_response`: the output moves with
  its own token's query), C x's covariance carried along (``W^T C W``, ``P C P``).

The row mean of the sum then reads ``Var(1^T x / D) = 1^T (S_h + S_f + K + K^T) 1 / D^2``.
``1^T K 1`` is weight-specific (zero on average over random weights) but not small where h's
features are strongly correlated: a residual stream that starts as a dense layer of 16 inputs
to 64 features has rank 16, and the row mean of the MLP's output then correlates -0.28 with the
residual's (Keras pre-norm encoders, docs/robustness.md). ``mean(h)`` itself does not reach the
MLP through a LayerNorm (P removes it), but P h does, and P h correlates with ``1^T h`` unless
``S_h 1`` is proportional to 1.

Where h's rows sum to 0 (a LayerNorm's output at initialization: post-norm), ``1^T K = 0`` is
kept exactly (its field, rescaled, sums to 0 only nearly). None where the branch does not lead
back to h through these ops alone, or where the products would exceed ``max_work``
multiply-adds.
"""

from __future__ import annotations

import numpy as np

from .centred_rows import centred_input, row_mean_of
from .context import RuleContext
from .covariance_layout import Field, variances
from .elementwise import elementwise
from .fusion import common_ancestor, fused_function
from .hermite import coefficients
from .merged_heads import merged_heads
from . import attention_response
from . import covariance_maps as maps

MAX_STEPS = 32  # ops between the skip and the branch's output
_LAYOUT = ("Reshape", "Identity", "Cast", "Dropout", "Squeeze", "Unsqueeze")
_AFFINE = ("Add", "Sub", "Mul", "Div")
_MERGE = ("Reshape", "Flatten", "Transpose", "Squeeze")  # ops that merge heads back


def _last(ctx: RuleContext, name: str) -> int | None:
    shape = ctx.graph.shape(name)
    return shape[-1] if shape else None


def _per_feature(ctx: RuleContext, const, n: int) -> np.ndarray | None:
    """A constant broadcast along the last axis only, as a vector of n, else None."""
    c = np.asarray(const, np.float64)
    if c.ndim and any(k != 1 for k in c.shape[:-1]):
        return None
    c = c.reshape(-1)
    if c.size not in (1, n):
        return None
    return np.broadcast_to(c, (n,)).copy()


def _step(ctx: RuleContext, t: str):
    """(input tensor, step) for the op producing t (module docstring), else None. A step is
    (kind, data)."""
    graph = ctx.graph
    node_id = graph.producer.get(t)
    if node_id is None:
        return None
    node = graph.node(node_id)
    sub = ctx.for_node(node_id)
    signals = [n for n in node.input if n and graph.is_signal(n)]
    n_out = _last(ctx, t)
    if n_out is None:
        return None
    if node.op_type in _MERGE and (found := merged_heads(ctx, t, loose=True)) is not None:
        return found[1], ("attention", t)
    if len(signals) == 2 and node.op_type in _AFFINE:
        centred = centred_input(sub)
        if centred is not None:
            plain = node.op_type == "Sub" and row_mean_of(sub, node.input[1]) is not None
            kind = "centre" if plain else "norm"
            return centred, (kind, (centred, t, None))
        found = common_ancestor(sub)
        if found is None or found[0] not in ctx.known:
            return None
        return found[0], ("fn", fused_function(node.op_type, found[1], found[2]).fn)
    if len(signals) != 1:
        return None
    x = signals[0]
    if _last(ctx, x) is None:
        return None
    if node.op_type == "LayerNormalization":
        axis = sub.attr("axis", -1)
        rank = len(graph.shape(t))
        if axis % rank != rank - 1 or node.input[0] != x:
            return None
        gamma = graph.value(node.input[1]) if len(node.input) > 1 else None
        sign = None if gamma is None else _per_feature(ctx, np.sign(gamma), n_out)
        return x, ("norm", (x, t, sign))
    if node.op_type == "MatMul":
        w = graph.value(node.input[1]) if node.input[0] == x and len(node.input) > 1 else None
        if w is None or np.ndim(w) != 2:
            return None
        return x, ("dense", np.asarray(w, np.float64))
    if node.op_type in _LAYOUT:
        return (x, ("same", None)) if _last(ctx, x) == n_out else None
    if node.op_type in _AFFINE:
        other = next((n for n in node.input if n and n != x), None)
        const = graph.value(other) if other is not None else None
        if const is None:
            return None
        c = _per_feature(ctx, const, n_out)
        if c is None or _last(ctx, x) != n_out:
            return None
        if node.op_type in ("Add", "Sub"):
            sign = -1.0 if node.op_type == "Sub" and node.input[1] == x else 1.0
            return x, ("scale", np.full(n_out, sign))
        if node.op_type == "Div":
            if node.input[0] != x or not np.all(c):
                return None
            c = 1.0 / c
        return x, ("scale", c)
    f = elementwise(node, ctx)
    if f is not None and _last(ctx, x) == n_out:
        return x, ("fn", f.fn)
    return None


def _path(ctx: RuleContext, h: str, f: str) -> list | None:
    """The steps from h to f (first to last), None where f is not such a branch of h."""
    steps, t = [], f
    for _ in range(MAX_STEPS):
        if t == h:
            return steps[::-1]
        found = _step(ctx, t)
        if found is None:
            return None
        x, step = found
        steps.append((x, t, step))
        t = x
    return None


def _work(ctx: RuleContext, steps: list, d: int) -> float:
    """Multiply-adds of the forward pass (K and the tracked covariance), roughly."""
    total = 0.0
    for x, t, (kind, data) in steps:
        n_in, n = _last(ctx, x), _last(ctx, t)
        if kind == "dense":
            total += (d + n_in + n) * n_in * n
        elif kind in ("norm", "attention"):
            total += 4.0 * n_in**3 + d * n_in * n
    return total


def _slope(ctx: RuleContext, fn, u: str, n: int) -> np.ndarray:
    """``E phi'(u_i)`` per feature, u Gaussian with its per-feature moments (Stein)."""
    shape = ctx.graph.shape(u)
    mean, var = ctx.known[u].values_along(len(shape) - 1, n)
    a, _ = coefficients(fn, mean, var)
    sd = np.sqrt(np.maximum(var, 0.0))
    return np.where(sd > 0, a[1] / np.where(sd > 0, sd, 1.0), 0.0)


def _norm(ctx: RuleContext, k: np.ndarray, x: str, y: str, sign, c: np.ndarray) -> np.ndarray:
    """``K (P - P C P / tr(P C P)) diag(a)`` (module docstring); ``c`` None: centring alone."""
    k = k - k.mean(axis=1, keepdims=True)  # K P
    if c is None:
        return k
    pcp = c - c.mean(axis=0, keepdims=True)
    pcp -= pcp.mean(axis=1, keepdims=True)
    trace = float(np.trace(pcp))
    if not trace > 0:
        return k * 0.0
    k = k - (k @ pcp) / trace
    shape = ctx.graph.shape(y)
    nu = variances(ctx.known[y], shape, len(shape) - 1)
    diag = np.diag(pcp)
    a = np.where(diag > 0, np.sqrt(np.maximum(nu, 0.0) / np.where(diag > 0, diag, 1.0)), 0.0)
    return k * (a if sign is None else a * sign)


def _centred_rows(ctx: RuleContext, name: str) -> bool:
    """Whether ``name``'s rows sum to 0: a LayerNorm over the last axis with equal scales and
    equal offsets (at initialization), or rows centred on their mean (:mod:`.centred_rows`),
    scaled per row (``Div`` by their spread)."""
    graph = ctx.graph
    for _ in range(4):
        node_id = graph.producer.get(name)
        if node_id is None:
            return False
        node = graph.node(node_id)
        if node.op_type == "LayerNormalization":
            rank = len(graph.shape(name) or ())
            gamma = graph.value(node.input[1]) if len(node.input) > 1 else None
            beta = graph.value(node.input[2]) if len(node.input) > 2 and node.input[2] else 0.0
            return (rank > 0 and ctx.for_node(node_id).attr("axis", -1) % rank == rank - 1
                    and gamma is not None and beta is not None and not np.any(beta)
                    and bool(np.all(np.ravel(gamma) == np.ravel(gamma)[0])))
        if node.op_type in ("Add", "Sub") and centred_input(ctx.for_node(node_id)) is not None:
            return True
        rows = [n for n in node.input if (graph.shape(n) or (0,))[-1] == 1]
        if node.op_type not in ("Mul", "Div") or len(rows) != 1 or rows[0] == node.input[0] \
                and node.op_type == "Div":
            return False
        name = next(n for n in node.input if n != rows[0])
    return False


def cross_covariance(ctx: RuleContext, h: str, f: str, s_h: np.ndarray,
                     max_work: float) -> np.ndarray | None:
    """``Cov(h, f)`` ``[D_h, D_f]`` across a row's features (module docstring) for ``f`` a
    branch of h, ``s_h`` h's covariance; None where f is not one."""
    steps = _path(ctx, h, f)
    d = s_h.shape[0]
    if not steps or _last(ctx, h) != d or _work(ctx, steps, d) > max_work:
        return None
    if not any(kind in ("dense", "fn", "norm") for _, _, (kind, _) in steps):
        return None  # f is h up to a layout op or a constant: not a branch
    k, c = np.asarray(s_h, np.float64), np.asarray(s_h, np.float64)  # Cov(h, t), Cov(t)
    for x, t, (kind, data) in steps:
        if k.shape[1] != _last(ctx, x):
            return None
        shape = ctx.graph.shape(t)
        if kind == "attention":
            found = attention_response.response(ctx, data, lambda _: c)
            if found is None:
                return None
            data = found[1]
        if kind in ("dense", "attention"):
            k = k @ data
            c = data.T @ c @ data if c is not None and kind == "dense" else None
        elif kind == "scale":
            k = k * data
            c = None if c is None else c * np.outer(data, data)
        elif kind == "fn":
            k, c = k * _slope(ctx, data, x, k.shape[1]), None
        elif kind in ("norm", "centre"):
            source, _, sign = data
            if kind == "centre":
                cx = None
            elif c is not None:  # the LayerNorm's input: h itself, or h through dense layers
                cx = c
            else:
                cx = np.diag(variances(ctx.known[source], ctx.graph.shape(source),
                                       len(ctx.graph.shape(source)) - 1))
            k = _norm(ctx, k, source, t, sign, cx)
            c = None if c is None else maps.centred(
                c, variances(ctx.known[t], shape, len(shape) - 1))
    if k.shape != (d, _last(ctx, f)) or not np.all(np.isfinite(k)):
        return None
    if _centred_rows(ctx, h):  # 1^T h = 0: so is 1^T K (S_h's rescaled field only nearly)
        k = k - k.mean(axis=0, keepdims=True)
    return k


def summed(ctx: RuleContext, signals: list[str], y: str, field_of,
           max_work: float) -> Field | None:
    """The field of a sum (or difference) of two signals: ``S_a + S_b`` (a missing field: that
    operand's variances), plus ``+- (K + K^T)`` where one operand is a branch of the other over
    the last axis (:func:`cross_covariance`)."""
    fields = [field_of(n) for n in signals]
    present = [f for f in fields if f is not None]
    if (not present or any(f.axis != present[0].axis for f in present)
            or any(f.head_axis is not None for f in present)):
        return None
    axis, shape = present[0].axis, ctx.graph.shape(y)
    parts = []
    for f, n in zip(fields, signals):
        if ctx.graph.shape(n) != shape:
            return None
        parts.append(f.cov if f is not None else np.diag(variances(ctx.known[n], shape, axis)))
    if parts[0].shape != parts[1].shape or parts[0].shape[0] != shape[axis]:
        return None
    total = parts[0] + parts[1]
    if axis == len(shape) - 1:
        for i in (0, 1):
            k = cross_covariance(ctx, signals[i], signals[1 - i], parts[i], max_work)
            if k is not None and k.shape == total.shape:
                sign = -1.0 if ctx.graph.node(ctx.graph.producer[y]).op_type == "Sub" else 1.0
                return Field(axis, total + sign * (k + k.T))
    return Field(axis, total)


__all__ = ["cross_covariance", "summed"]
