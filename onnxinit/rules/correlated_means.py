"""Means and sums over a tensor's correlated channels (or a token's correlated features).

The reduce rule takes the K reduced elements as independent, ``Var(mean) = nu / K``. Where the
reduced axis is the one :mod:`.channel_covariance` carries a field across (a Conv's channels at
one position, a token's features after a dense layer), the mean's variance is the total of the
reduced values' covariance, ``1^T S 1 / K^2``: the reduce rule's ``nu / K`` times

    F = sum_ij Cov(y_i, y_j) / sum_i Var y_i

``y = g(z)`` is an element-wise chain (ReLU, a square ``Pow(x, 2)`` or ``x * x``, constants'
affine maps, a centring ``x - mean(x)`` over the same axes at the mean's expectation: a mean
square of centred values) of a tensor ``z`` taken as Gaussian with the field ``S``; Mehler's
formula sums ``Cov(g_i(z_i), g_j(z_j)) = sum_n c_n^i c_n^j rho_ij^n`` with each channel's
normalised Hermite coefficients of its composed chain (:mod:`.hermite`, eight orders and the
remainder). ``S`` is z's field, or where it has none the covariance a dense layer's features
have for the weights at hand (``W^T diag(nu_x) W``: :func:`.channel_covariance.row_covariance`;
a mean has all-ones weights, which do not average the cross terms out as the next layer's
random weights do) where other axes are reduced too. Over a row alone (the last axis) of a
tensor without a chain to follow, its row field (:func:`.channel_covariance.row_covariance`):
a dense layer's row mean is the linear form ``x . u + mean(b)``, ``u = W 1 / E``, ``Var = u^T
C_x u = 1^T S 1 / E^2`` exactly; the pairs' ``signed`` (:mod:`.feature_pairs`, which leaves a
row this factor took) is a mean over pairs that a per-feature scale of random sign does not
keep. Other reduced axes
are taken as independent: F applies to each row along the field's axis. Where the chain cannot be followed the reduced tensor's own field (over that
axis alone) is summed (its element-wise transfer keeps Mehler's orders 1 and 2). Over the
channels and every position of a map together see :mod:`.map_means`.
"""

from __future__ import annotations

from collections.abc import Callable
from math import factorial

import numpy as np

from ..strict import fall_back
from .channel_covariance import covariance, row_covariance
from .context import RuleContext, RuleError
from .covariance_layout import variances
from .elementwise import elementwise
from .fixed_energy_rows import squares_normalised_term
from .gaussian import quadrature
from .hermite import ORDER
from .reduce_axes import reduced_axes

_Z, _W = quadrature(False)  # composite rule: chains with kinks (ReLU)


def _basis() -> np.ndarray:
    out = [np.ones_like(_Z), _Z.copy()]
    for n in range(1, ORDER):
        out.append(_Z * out[-1] - n * out[-2])
    return np.array([h / np.sqrt(factorial(n)) for n, h in enumerate(out)])


_BASIS = _basis()  # [ORDER + 1, nodes]: He_n / sqrt(n!)


def _is_centring(ctx: RuleContext, a: str, m: str, axes: tuple[int, ...]) -> bool:
    """``m`` is ``ReduceMean(a)`` over ``axes`` with its axes kept."""
    node_id = ctx.graph.producer.get(m)
    if node_id is None:
        return False
    node = ctx.graph.node(node_id)
    if node.op_type != "ReduceMean" or node.input[0] != a:
        return False
    sub = ctx.for_node(node_id)
    shape = ctx.graph.shape(a)
    try:
        same = bool(shape) and reduced_axes(sub, len(shape)) == tuple(axes)
    except RuleError:  # axes not constant
        return False
    return same and bool(sub.attr("keepdims", 1))


def chain(ctx: RuleContext, tensor: str, axes: tuple[int, ...]
          ) -> tuple[str, list[Callable[[np.ndarray], np.ndarray]]] | None:
    """(z, [f_1, ..., f_n]) with ``tensor = f_n(...f_1(z))`` element-wise, z the first tensor
    back that no element-wise node produces; the functions take arrays laid out like the
    tensor (a leading axis of quadrature nodes in place of the batch). A centring ``x - m``,
    m the mean over ``axes`` of x, is a shift by E[m] (averaged over the kept axes where it
    varies along them: the factor it enters is a ratio). None where z is itself a chain of a
    source (its values are not the Gaussian the field describes)."""
    graph, known = ctx.graph, ctx.known
    fns: list = []
    t = tensor
    for _ in range(32):
        node_id = graph.producer.get(t)
        if node_id is None:
            break
        node = graph.node(node_id)
        signals = [n for n in node.input if n and not graph.is_constant(n)]
        if node.op_type == "Mul" and len(node.input) == 2 and node.input[0] == node.input[1]:
            fns.append(np.square)
            t = node.input[0]
            continue
        if node.op_type in ("Sub", "Add") and len(signals) == 2 and signals == list(node.input):
            a, m = node.input
            if m not in known or not _is_centring(ctx, a, m, axes):
                break
            shift = float(np.mean(known[m].mean))
            fns.append((lambda v, s=shift: v - s) if node.op_type == "Sub"
                       else (lambda v, s=shift: v + s))
            t = a
            continue
        if len(signals) != 1:
            break
        f = elementwise(node, ctx)
        if f is None:
            break
        fns.append(f.fn)
        t = signals[0]
    m = known.get(t)
    if m is None or (m.source is not None and m.source.chain):
        return None
    return t, fns[::-1]


def coefficients(fns, mean: np.ndarray, var: np.ndarray, axis: int, rank: int):
    """(c ``[ORDER + 1, n]``, remainder ``[n]``) of ``g = f_n o ... o f_1`` at ``z ~ N(mean,
    var)`` for the n indices along ``axis`` (laid out at ``rank``, the quadrature nodes on
    axis 0); None where g is not finite or depends on the other axes."""
    n = mean.size
    shape = [1] * rank
    shape[axis] = n
    z = mean.reshape(shape) + np.sqrt(np.maximum(var, 0.0)).reshape(shape) * _Z.reshape(
        (-1,) + (1,) * (rank - 1))
    with np.errstate(all="ignore"):
        y = z
        for fn in fns:
            y = fn(y)
        y = np.asarray(y, dtype=np.float64)
    if y.shape != z.shape or not np.all(np.isfinite(y)):
        return None
    y = np.moveaxis(y, axis, 0).reshape(n, -1)  # [n, nodes]
    c = (y * _W) @ _BASIS.T  # [n, ORDER + 1]
    remainder = np.maximum((y * y) @ _W - (c**2).sum(axis=1), 0.0)
    return c.T, remainder


def covariance_sum(c: np.ndarray, rem: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """``Cov(g_i, g_j)`` ``[n, n, ...]`` for correlations ``rho`` ``[n, n, ...]`` (offsets on
    the trailing axes): Mehler's series from order 1, the remainder on order ``ORDER + 1``."""
    n, extra = c.shape[1], rho.ndim - 2
    rho = np.clip(rho, -1.0, 1.0)
    pair = (lambda a: (a[:, None] * a[None, :]).reshape((n, n) + (1,) * extra))
    out = np.zeros(rho.shape)
    power = np.ones(rho.shape)
    for k in range(1, c.shape[0]):
        power = power * rho
        out += pair(c[k]) * power
    return out + pair(np.sqrt(rem)) * power * rho


def _chain_factor(ctx: RuleContext, axes: tuple[int, ...]) -> float | None:
    found = chain(ctx, ctx.node.input[0], axes)
    if found is None:
        return None
    z, fns = found
    shape = ctx.graph.shape(z)
    f = covariance(ctx, z)
    if f is None and len(axes) > 1:  # over a dense row alone: feature_pairs' pairs
        f = row_covariance(ctx, z)
    if not shape or f is None or f.head_axis is not None or f.axis not in axes:
        return None
    s = np.asarray(f.cov, dtype=np.float64)
    n = s.shape[0]
    mean = np.broadcast_to(ctx.known[z].values_along(f.axis, n)[0], (n,)).astype(np.float64)
    var = np.diag(s).copy()
    if np.any(var <= 0) or not np.allclose(var, variances(ctx.known[z], shape, f.axis),
                                           rtol=0.05):
        return None
    found = coefficients(fns, mean, var, f.axis, len(shape))
    if found is None:
        return None
    c, rem = found
    sd = np.sqrt(var)
    total = covariance_sum(c, rem, s / np.outer(sd, sd))
    own = (c[1:] ** 2).sum(axis=0) + rem
    if own.sum() <= 0:
        return None
    return max(float(total.sum()), 0.0) / float(own.sum())


def field_sum_factor(ctx: RuleContext, axes: tuple[int, ...]) -> float | None:
    """F (module docstring) for a mean or sum of the node's input 0 over the axis its field is
    across (and other axes, whose elements are taken as independent of each other); None
    where it has no field there (independent elements)."""
    try:
        return _field_sum_factor(ctx, axes)
    except (RuleError, ValueError, TypeError, IndexError) as exc:
        fall_back(exc, (RuleError,))
        return None


def _field_sum_factor(ctx: RuleContext, axes: tuple[int, ...]) -> float | None:
    if squares_normalised_term(ctx):  # not a Gaussian's energy: the Pairs' law
        return None
    factor = _chain_factor(ctx, axes)
    if factor is not None:
        return factor
    f = covariance(ctx, ctx.node.input[0])
    shape = ctx.graph.shape(ctx.node.input[0])
    if f is None and shape and tuple(axes) == (len(shape) - 1,) and _linear_row(ctx):
        f = row_covariance(ctx, ctx.node.input[0])  # a dense layer's row: the weights at hand
    if f is None or f.head_axis is not None or tuple(axes) != (f.axis,):
        return None
    return sum_over_trace(f.cov)


def _linear_row(ctx: RuleContext) -> bool:
    """The node's input 0 is a dense layer's output (MatMul/Gemm by a constant), its bias added
    or a constant factor applied: a linear form of the layer's input."""
    graph, name = ctx.graph, ctx.node.input[0]
    for _ in range(3):
        node_id = graph.producer.get(name)
        if node_id is None:
            return False
        node = graph.node(node_id)
        signals = [n for n in node.input if n and graph.is_signal(n)]
        if node.op_type in ("MatMul", "Gemm"):
            return len(signals) == 1 and signals[0] == node.input[0]
        if node.op_type not in ("Add", "Sub", "Mul", "Div") or len(signals) != 1:
            return False
        name = signals[0]
    return False


def sum_over_trace(cov) -> float | None:
    """``1^T S 1 / tr S`` of a covariance S: a mean's variance over the independent one's;
    None where the trace is not positive or the sum not finite."""
    s = np.asarray(cov, dtype=np.float64)
    trace = float(np.trace(s))
    total = float(s.sum())
    if not (trace > 0 and np.isfinite(total)):
        return None
    return max(total, 0.0) / trace


def summed_row(ctx: RuleContext) -> bool:
    """Whether the reduce rule took a ReduceMean/ReduceSum over the last axis of the node's
    input 0 with its field (:func:`field_sum_factor`), which :mod:`.feature_pairs` then leaves."""
    shape = ctx.graph.shape(ctx.node.input[0]) if ctx.node.input else None
    return bool(shape) and ctx.node.op_type in ("ReduceMean", "ReduceSum") and (
        field_sum_factor(ctx, (len(shape) - 1,)) is not None)


__all__ = ["chain", "coefficients", "covariance_sum", "field_sum_factor", "sum_over_trace",
           "summed_row"]
