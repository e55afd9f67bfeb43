"""A mean over some (or all) positions of a Conv's map, each channel kept: the global context of
a focal modulation (``ReduceMean`` over H, then over W), a pooling written as a mean over rows.

The reduce rule takes the K reduced positions as independent, ``Var(mean_j) = nu_j / K``. A
Conv's output ``z`` is correlated across positions channel by channel, ``R_j(d) = Corr(z_j(p),
z_j(p + d))`` (the diagonal of :func:`.map_means`'s field: for a depthwise kernel ``w_j`` on
independent positions ``R_j(d) = sum_k w_jk w_j(k+d) / sum_k w_jk^2``, so the correlations of
all offsets sum to ``(sum_k w_jk)^2 / sum_k w_jk^2``, which a random kernel makes anything from
0 to its size channel by channel while their average over channels is near 1). The reduced
values ``y_j = g(z_j)`` (an element-wise chain: GELU) sum by Mehler's formula::

    Var(mean_p y_j) = nu_j / K  *  sum_d n(d) Cov_j(R_j(d)) / (K Cov_j(1)),
    Cov_j(rho) = sum_{k >= 1} c_jk^2 rho^k,     n(d) = prod_{a reduced} (S_a - |d_a|)

(``c_jk`` the normalised Hermite coefficients of ``g`` at ``N(mu_j, s_j^2)``; offsets only along
the reduced axes, ``d_a = 0`` along the kept ones). A ReduceMean (axes kept) of a ReduceMean
over other spatial axes of the same map is the mean over the union of their axes: the rule
follows such means back to the map. None where the chain does not reach a Conv's output or the
field is over budget (:func:`.map_means.conv_field`).
"""

from __future__ import annotations

import numpy as np

from ..strict import fall_back
from .context import RuleContext, RuleError
from .covariance_layout import within
from .correlated_means import chain, coefficients
from .elementwise import elementwise
from . import position_covariance
from .depthwise_field import field as depthwise_field
from .map_means import DEPTH, conv_field
from .reduce_axes import reduced_axes

RADIUS = 16  # offsets per axis of a map whose positions' correlation is summed


def _mean_source(ctx: RuleContext, tensor: str, axes: set[int], rank: int):
    """(map, union of axes): ``tensor``'s ReduceMeans (axes kept, spatial) followed back."""
    for _ in range(4):
        node_id = ctx.graph.producer.get(tensor)
        if node_id is None:
            break
        node = ctx.graph.node(node_id)
        if node.op_type != "ReduceMean":
            break
        sub = ctx.for_node(node_id)
        shape = ctx.graph.shape(node.input[0])
        if not shape or len(shape) != rank or not sub.attr("keepdims", 1):
            break
        try:
            more = reduced_axes(sub, rank)
        except RuleError:
            break
        if more is None or not set(more) <= set(range(2, rank)) or set(more) & axes:
            break
        axes = axes | set(more)
        tensor = node.input[0]
    return tensor, axes


def _compose(fns):
    def apply(v):
        for fn in fns:
            v = fn(v)
        return v
    return apply


def _gated_chain(ctx: RuleContext, tensor: str):
    """(z, [f_1, ..., f_n]) as :func:`.correlated_means.chain`, also through a product of a
    value and an element-wise function of it, ``a * h(a)`` (GELU or SiLU written out:
    ``x * (1 + erf(x / sqrt 2)) / 2``, ``x * sigmoid(x)``)."""
    graph = ctx.graph
    outer: list = []
    t = tensor
    for _ in range(32):
        found = chain(ctx, t, ())
        if found is not None:
            return found[0], found[1] + outer[::-1]
        node_id = graph.producer.get(t)
        if node_id is None:
            return None
        node = graph.node(node_id)
        signals = [n for n in node.input if n and not graph.is_constant(n)]
        if node.op_type == "Mul" and len(signals) == 2 and signals == list(node.input):
            a, b = signals
            inner = chain(ctx, b, ())
            if inner is None or inner[0] != a:
                a, b = b, a
                inner = chain(ctx, b, ())
            if inner is None or inner[0] != a:
                return None
            h = _compose(inner[1])
            outer.append(lambda v, h=h: v * h(v))
            t = a
            continue
        if len(signals) != 1:
            return None
        f = elementwise(node, ctx)
        if f is None:
            return None
        outer.append(f.fn)
        t = signals[0]
    return None


def _field_factor(corr_diag: np.ndarray, c: np.ndarray, rem: np.ndarray, shape, axes) -> np.ndarray:
    """Per channel ``sum_d n(d) Cov_j(R_j(d)) / (K Cov_j(1))`` (module docstring)."""
    n = corr_diag.shape[0]
    radius = [(m - 1) // 2 for m in corr_diag.shape[1:]]
    index: list = [slice(None)]
    counts = np.ones(())
    for a, r in enumerate(radius):
        size = shape[2 + a]
        if 2 + a in axes:
            index.append(slice(None))
            along = np.maximum(size - np.abs(np.arange(-r, r + 1)), 0).astype(np.float64)
            counts = counts[..., None] * along
        else:
            index.append(r)  # offset 0 along a kept axis
    rho = np.clip(corr_diag[tuple(index)], -1.0, 1.0).reshape(n, -1)
    counts = counts.reshape(-1)
    cov = np.zeros_like(rho)
    power = np.ones_like(rho)
    for k in range(1, c.shape[0]):
        power = power * rho
        cov += (c[k] ** 2)[:, None] * power
    cov += rem[:, None] * power * rho
    own = (c[1:] ** 2).sum(axis=0) + rem
    k_total = float(np.prod([shape[a] for a in axes]))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.maximum(cov @ counts, 0.0) / (k_total * own)


def position_mean_moments(ctx: RuleContext, axes: tuple[int, ...]):
    """(mean, variance, K), laid out at the input's rank with the union of axes reduced (kept as
    1), of the node's input 0 read as the mean over its map's positions (module docstring);
    None where it does not apply."""
    try:
        return _position_mean_moments(ctx, axes)
    except (RuleError, ValueError, TypeError, IndexError) as exc:
        fall_back(exc, (RuleError,))
        return None


def _position_mean_moments(ctx: RuleContext, axes: tuple[int, ...]):
    shape = ctx.graph.shape(ctx.node.input[0])
    if not shape or len(shape) < 3 or not set(axes) <= set(range(2, len(shape))):
        return None
    rank = len(shape)
    source, union = _mean_source(ctx, ctx.node.input[0], set(axes), rank)
    found = _gated_chain(ctx, source)
    if found is None:
        return None
    z, fns = found
    shape_map = ctx.graph.shape(source)
    if tuple(ctx.graph.shape(z) or ()) != tuple(shape_map or ()) or source not in ctx.known:
        return None
    lay = [1] * rank
    lay[1] = shape_map[1]
    k_total = float(np.prod([shape_map[a] for a in union]))
    kept = ctx.known[source].__dict__.setdefault("_position_covariance", {})
    if z not in kept:  # the means over H, then W of one map read the same covariance
        exact = position_covariance.covariance(ctx, z, DEPTH, _gated_chain)
        kept[z] = None if exact is None else position_covariance.through_chain(
            *exact, fns, rank)
    moved = kept[z]
    if moved is not None:  # a small map: every pair of positions, borders included
        var = position_covariance.mean_variance(moved[0], list(shape_map[2:]), union)
        mu = ctx.known[source].values_along(1, shape_map[1])[0]
        return (np.broadcast_to(np.asarray(mu, np.float64), (shape_map[1],)).reshape(lay),
                np.maximum(var, 0.0).reshape(lay), k_total)
    reach = [min(size - 1, RADIUS) for size in shape_map[2:]]  # every offset of the map
    own_field = depthwise_field(ctx, z, DEPTH, _gated_chain, reach)
    if own_field is not None:
        diag, var, mean = own_field
    else:
        gauss = conv_field(ctx, z, DEPTH)
        if gauss is None:
            return None
        corr, var, mean = gauss
        diag = corr[np.arange(corr.shape[0]), np.arange(corr.shape[0])]
    coeffs = coefficients(fns, mean, var, 1, rank)
    if coeffs is None:
        return None
    c, rem = coeffs
    if not np.all((c[1:] ** 2).sum(axis=0) + rem > 0):
        return None
    n = diag.shape[0]
    factor = _field_factor(diag, c, rem, shape_map, union)
    if not np.all(np.isfinite(factor)):
        return None
    mu = ctx.known[source].values_along(1, shape_map[1])[0]
    nu = within(ctx.known[source], shape_map)
    k_total = float(np.prod([shape_map[a] for a in union]))
    lay = [1] * rank
    lay[1] = n
    return (np.asarray(mu, dtype=np.float64).reshape(lay),
            (np.asarray(nu, dtype=np.float64) * factor / k_total).reshape(lay), k_total)


__all__ = ["position_mean_moments"]
