"""A row scaled by a function of its own mean square: RMSNorm and LayerNorm written out as ops
(``x * 1/sqrt(mean(x^2) + eps)``, ``x / sqrt(mean(x^2) + eps)``; Llama, T5, and LayerNorm's
centred ``d / sqrt(mean(d^2) + eps)``).

Taken as independent, ``E[x^2 g(s)^2] = E[x^2] E[g(s)^2]`` reads high by Jensen's inequality
(``E[1/s] > 1/E[s]``: 1.035x on a row of 64 features). The product is not independent of its
factor: summed over the row, ``sum_f y_f^2 = D s g(s)^2`` with ``s`` the row's mean square, so
exactly ``mean_f E[y_f^2] = E[s g(s)^2]`` (``s / (s + eps)`` for RMSNorm, 1 but for eps). Each
feature takes its share of the row's second moment, ``E[y_f^2] = E[x_f^2] / mean_g E[x_g^2] *
E[s g(s)^2]``, and its mean stays ``E[x_f] E[g(s)]``. ``s`` is taken log-normal with the row's
mean square as mean (per token where the input is spelled out per token) and the mean square
tensor's relative variance.

Global response normalization (ConvNeXt V2) scales a tensor by its own L2 norm over the map:
``y = x * N``, ``N = G / (mean_c G + eps)``, ``G = ||x||_2`` over the spatial axes, one value per
sample and channel. Over the n positions of one group ``sum x^2 = Q = G^2``, so
``E[x^2 N^2] = E[Q^2] E[c^2] / n`` (``c = 1 / (mean_c G + eps)``, a mean over many channels,
taken as independent of one channel's Q) against ``E[Q]^2 E[c^2] / n`` for independent factors:
``E[Q^2] = E[Q]^2 (1 + 1/k)``, ``E[Q] = n E[x^2]``, with
``Q`` Gamma of shape k fitted per channel to G's moments
(``E[G]^2 / E[G^2] = Gamma(k + 1/2)^2 / (k Gamma(k)^2)``). On a 2x2 map that is 1.9x. Its
mean is ``E[x G] E[c]``, ``E[x G] = mu (E[G] + sigma^2 E[1/G])`` by Stein's lemma (exact for a
Gaussian x): for a positive x (GELU's) the larger values get the larger scale.
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from ..special import gammaln  # the ufunc alone: scipy.special's package is 1 s
from .chi_square import mean_square_chain
from .context import RuleContext, RuleError
from .gaussian import compose, gaussian_moments
from .mixture import lift
from .table_rows import squared_input
from .token_field import profile_grid


def without_casts(ctx: RuleContext, name: str) -> str:
    """``name`` before any Cast/Identity producing it."""
    return skip_casts(ctx.graph, name)


def skip_casts(graph, name: str, ops=("Cast", "Identity", "CastLike")) -> str:
    """:func:`without_casts` in ``graph``; ``ops``: the single-input ops passed by (up to 4)."""
    for _ in range(4):
        node_id = graph.producer.get(name)
        if not node_id or graph.node(node_id).op_type not in ops:
            return name
        name = graph.node(node_id).input[0]
    return name


def _scale_chain(ctx: RuleContext, x: str, name: str, any_axis: bool = False,
                 sums: bool = False):
    """(mean-square tensor, element-wise chain from it to ``name``) when ``name`` is an
    element-wise function of ``mean(x^2)`` over the last axis (``any_axis``: or over the
    channels of a map ``[N, C, H, ...]``) (keepdims; ``sums``: or of ``sum(x^2)``), else
    None. Not over the tokens of a sequence ``[N, T, D]``: its mean square over the tokens has
    its rows' shapes, but the rows are not normalised and what reads them takes the features as
    rows."""
    found = mean_square_chain(ctx, name)
    if found is None:
        return None
    node_id = ctx.graph.producer[found[0]]
    node = ctx.graph.node(node_id)
    axis = _row_axis(ctx.for_node(node_id))
    rank = len(ctx.graph.shape(node.input[0]) or ())
    if (node.op_type not in (("ReduceMean", "ReduceSum") if sums else ("ReduceMean",))
            or axis is None
            or not (axis == rank - 1 or (any_axis and axis == 1 and rank >= 4))
            or without_casts(ctx, squared_input(ctx.graph, node.input[0])) != x):
        return None
    return found


def _row_axis(ctx: RuleContext) -> int | None:
    """The one axis a ReduceMean reduces, keeping it (the row's: the last axis for a token's
    features, axis 1 for a map's channels at one position), else None."""
    try:
        x, y = ctx.in_shape(0), ctx.out_shape(0)
    except RuleError:
        return None
    if len(y) != len(x):
        return None
    changed = [a for a, (i, o) in enumerate(zip(x, y)) if i != o]
    return changed[0] if len(changed) == 1 and y[changed[0]] == 1 else None


def scaled_row(ctx: RuleContext, any_axis: bool = False,
                sums: bool = False) -> tuple[int, tuple] | None:
    """(the row's input index, (mean-square tensor, chain to the scale)) for a Mul/Div of a row
    by an element-wise function of its own mean square (over the last axis; ``any_axis``: or a
    map's channels; ``sums``: or sum of squares), else None."""
    node = ctx.node
    order = (0, 1) if node.op_type == "Div" else (0, 1, 1, 0)
    for xi, si in zip(order[::2], order[1::2]):
        found = _scale_chain(ctx, without_casts(ctx, node.input[xi]), node.input[si], any_axis,
                             sums)
        if found is not None:
            break
    else:
        return None
    return xi, found


def row_scale(ctx: RuleContext):
    """(the row's input index, m -> the factor ``g(m)`` it is multiplied by at a mean square m)
    for a Mul/Div of a row by an element-wise function of its own mean square (``1 / h(m)`` for
    a Div by ``h``), else None."""
    if ctx.node.op_type not in ("Mul", "Div") or len(ctx.node.input) != 2:
        return None
    scaled = scaled_row(ctx)
    if scaled is None:
        return None
    g = compose(scaled[1][1])
    if ctx.node.op_type == "Div":
        return scaled[0], lambda m: 1.0 / g(m)
    return scaled[0], g


def row_normalised(inputs, ctx: RuleContext, rank: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``y = x * g(s)`` or ``y = x / h(s)``, ``s = mean_f x_f^2`` over the row (the axis the
    mean square reduces: a token's features, or a map's channels at one position):
    ``E[y_f^2] = E[x_f^2] / mean_g E[x_g^2] * E[s g(s)^2]``, ``E[y_f] = E[x_f] E[g(s)]``
    with ``s`` log-normal (mean: the row's mean square; relative variance: the mean square
    tensor's). A sum of squares ``Q = D s`` over the D features of the row (TensorFlow's
    ``l2_normalize``, ``x / sqrt(max(Q, eps))``; Keras' UnitNormalization) reads
    ``E[y_f^2] = E[x_f^2] / mean_g E[x_g^2] * E[Q g(Q)^2] / D``, ``E[y_f] = E[x_f] E[g(Q)]``.
    (mean, var) arrays at ``rank``; None when the node is not such a product."""
    node = ctx.node
    if node.op_type not in ("Mul", "Div") or len(inputs) != 2 or any(m is None for m in inputs):
        return None
    scaled = scaled_row(ctx, any_axis=True, sums=True)
    if scaled is None:
        return None
    xi, found = scaled
    s_name, chain = found
    reduce_ctx = ctx.for_node(ctx.graph.producer[s_name])
    axis = _row_axis(reduce_ctx)
    d = int(reduce_ctx.in_shape(0)[axis]) if reduce_ctx.node.op_type == "ReduceSum" else 1
    known = ctx.known or {}
    s = known.get(s_name)
    if s is None:
        return None
    g = compose(chain)
    if node.op_type == "Div":
        h = g
        g = lambda v: 1.0 / h(v)  # noqa: E731
    x = inputs[xi]
    mean, var = lift(x.mean, rank), lift(x.var, rank)
    second = var + mean**2
    # E[s] per row (per token where spelled out); a scalar law is every feature's own
    row = second if second.ndim == 0 else np.mean(
        second, axis=axis if second.ndim == rank else -1, keepdims=True)
    sigma2 = np.log1p(_relative_variance(s, ctx.graph.shape(s_name), d * row)) * np.ones_like(row)
    mu = np.log(np.maximum(d * row, 1e-300)) - sigma2 / 2
    with np.errstate(all="ignore"):
        e_sg2, _ = gaussian_moments(lambda z: np.exp(z) * g(np.exp(z)) ** 2, mu, sigma2,
                                    smooth=True)
        e_g, _ = gaussian_moments(lambda z: g(np.exp(z)), mu, sigma2, smooth=True)
    if not (np.all(np.isfinite(e_sg2)) and np.all(np.isfinite(e_g))):
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(row > 0, second / row, 0.0)
    out_mean = mean * e_g
    out_var = np.maximum(share * e_sg2 / d - out_mean**2, 0.0)
    return out_mean, out_var


def normalisation_degree(ctx: RuleContext) -> float | None:
    """How much of a row's energy fluctuation a row normalisation ``y = x g(s)`` (``x / h(s)``)
    keeps: the row's energy is ``D s g(s)^2``, so ``d log E_y = rho d log s`` with ``rho = d log
    (s g(s)^2) / d log s`` (RMSNorm: ``eps / (s + eps)``: 0 normalises, 1 where eps dominates a
    small row and the norm is a scale). ``E[rho^2]`` over the mean square's per-token means,
    weighted by ``E[s]^2`` (a relative variance pools so); None when the node is not one.
    (:func:`normalisation_tokens` gives each token's, for the excess token by token.)"""
    found = normalisation_tokens(ctx)
    if found is None:
        return None
    at, _, kept = found
    weight = at * at
    return float(np.sum(weight * kept) / np.sum(weight))


def normalisation_tokens(ctx: RuleContext) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(each token's mean square ``s_t``, its output energy ``s_t g(s_t)^2``, its ``rho_t^2``)
    over the mean square's per-token means (one entry where it has one mean) for
    :func:`normalisation_degree` and :mod:`.token_excess`; None when the node is not a row
    normalisation."""
    node = ctx.node
    if node.op_type not in ("Mul", "Div") or len(node.input) != 2:
        return None
    scaled = scaled_row(ctx)
    if scaled is None:
        return None
    found = scaled[1]
    s = (ctx.known or {}).get(found[0])
    if s is None:
        return None
    g = compose(found[1])
    power = -2.0 if node.op_type == "Div" else 2.0
    at = np.asarray(s.mean, np.float64).ravel()
    at = at[np.isfinite(at) & (at > 0)]
    if at.size == 0:
        return None
    step = 1e-3
    with np.errstate(all="ignore"):
        up, down = (np.log(at * np.exp(h)) + power * np.log(np.abs(g(at * np.exp(h))))
                    for h in (step, -step))
        energy = at * np.abs(g(at)) ** power
    rho = (up - down) / (2 * step)
    if not np.all(np.isfinite(rho)):
        return None
    if not (np.all(np.isfinite(energy)) and np.sum(energy * energy) > 0):
        energy = at  # the input's, where the output's overflows
    return at, energy, rho * rho


def _relative_variance(s: Moments, shape, row: np.ndarray):
    """The mean square's relative variance within a row: per token where the row's mean square
    is spelled out per token and s carries a token field (``nu p_t / E[s_t]^2``: the pooled
    variance would add the spread of the tokens' means, 19x at a causal attention's first
    token, to every token's Jensen term), per row where s's own moments are spelled out per row
    (a constant per-token scale before the norm), else pooled."""
    grid = profile_grid(s, shape) if s.tokens is not None and shape else None
    if grid is not None and np.ndim(grid.mean) == row.ndim and np.ndim(grid.var) == row.ndim:
        mean, var = np.broadcast_arrays(grid.mean, grid.var)
        if mean.shape == np.broadcast_shapes(mean.shape, row.shape) and np.all(mean > 0):
            return var / mean**2
    mean, var = np.asarray(s.mean, np.float64), np.asarray(s.var, np.float64)
    if (mean.size > 1 and mean.ndim == row.ndim and var.ndim == row.ndim
            and np.broadcast_shapes(mean.shape, var.shape, row.shape) == np.shape(row)
            and np.all(mean > 0)):
        return var / mean**2  # spelled out per row: each row's own
    s_mean, s_var = s.total()
    return s_var / s_mean**2 if s_mean > 0 else 0.0


def _l2_of(ctx: RuleContext, name: str, x: str) -> bool:
    """``name`` is ``ReduceL2(x)`` (keepdims) over axes other than the last."""
    graph = ctx.graph
    node_id = graph.producer.get(name)
    if not node_id:
        return False
    node = graph.node(node_id)
    if node.op_type != "ReduceL2" or without_casts(ctx, node.input[0]) != x:
        return False
    nctx = ctx.for_node(node_id)
    try:
        shape_in, shape_out = nctx.in_shape(0), nctx.out_shape(0)
    except RuleError:
        return False
    reduced = [i for i, (a, b) in enumerate(zip(shape_in, shape_out)) if a != b]
    return (len(shape_in) == len(shape_out) and bool(reduced)
            and len(shape_in) - 1 not in reduced)


def _gamma_shape(ratio: np.ndarray) -> np.ndarray:
    """k with ``Gamma(k + 1/2)^2 / (k Gamma(k)^2) = ratio`` (``E[G]^2 / E[G^2]`` of
    ``G = sqrt(Q)``, Q Gamma of shape k), by bisection on log k in [1e-3, 1e6]."""
    ratio = np.clip(ratio, 1e-6, 1 - 1e-9)
    lo, hi = np.full(ratio.shape, np.log(1e-3)), np.full(ratio.shape, np.log(1e6))
    for _ in range(60):
        mid = (lo + hi) / 2
        k = np.exp(mid)
        r = np.exp(2 * (gammaln(k + 0.5) - gammaln(k)) - mid)
        lo, hi = np.where(r < ratio, mid, lo), np.where(r < ratio, hi, mid)
    return np.exp((lo + hi) / 2)


def _group_size(ctx: RuleContext, name: str) -> int:
    node_id = ctx.graph.producer[name]
    nctx = ctx.for_node(node_id)
    return int(np.prod([a for a, b in zip(nctx.in_shape(0), nctx.out_shape(0)) if a != b]))


def _scale_moments(ctx: RuleContext, n_node, g_name: str, rank: int):
    """(E[c], E[c^2]) of the factor c in ``N = G * c``: ``c = d`` for ``G * d``, ``1/d`` for
    ``G / d`` (``E[1/d] ~ (1 + v/m^2) / m``, ``E[1/d^2] ~ (1 + 3 v/m^2) / m^2``)."""
    other = n_node.input[1] if n_node.input[0] == g_name else n_node.input[0]
    d = (ctx.known or {}).get(other)
    if d is not None:
        m, v = lift(d.mean, rank), lift(d.var, rank)
    else:
        value = ctx.graph.value(other)
        if value is None:
            return None
        m, v = lift(np.asarray(value, np.float64), rank), np.float64(0.0)
    if n_node.op_type == "Mul":
        return m, v + m**2
    if np.any(m <= 0):
        return None
    rel = v / m**2
    return (1 + rel) / m, (1 + 3 * rel) / m**2


def _independent_inverse_shape(x: Moments, rank: int, n: int) -> np.ndarray | None:
    """``Var[Q] / E[Q]^2 = Var[x^2] / (n E[x^2]^2)`` for Q a sum of n independent squares of x,
    from x's law (a chain of a Gaussian); None when x has no such description."""
    src = x.source
    if src is None:
        return None
    try:
        e2, v2 = gaussian_moments(lambda z: compose(src.chain)(z) ** 2, src.mean, src.var,
                                  rank=rank)
    except RuleError:
        return None
    e2, v2 = lift(e2, rank), lift(v2, rank)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(e2 > 0, v2 / (n * e2**2), 0.0)
    return out if np.all(np.isfinite(out)) else None


def response_normalised(inputs, ctx: RuleContext, rank: int
                        ) -> tuple[np.ndarray, np.ndarray] | None:
    """``y = x * N`` with ``N = G / d`` (or ``G * d``), ``G = ReduceL2(x)`` over a group of n
    positions and d a statistic of G over other axes (independent of one channel's G):
    ``E[y^2] = n E[x^2]^2 (1 + 1/k) E[c^2]``, ``E[y] = mu (E[G] + sigma^2 E[1/G]) E[c]``
    (Q = G^2 Gamma of shape k fitted per channel to G's moments, Stein's lemma for E[x G]).
    (mean, var) at ``rank``; None when the node is not such a product."""
    node, graph = ctx.node, ctx.graph
    if node.op_type != "Mul" or len(inputs) != 2 or any(m is None for m in inputs):
        return None
    known = ctx.known or {}
    for xi in (0, 1):
        x, n_name = without_casts(ctx, node.input[xi]), node.input[1 - xi]
        n_id = graph.producer.get(n_name)
        n_node = graph.node(n_id) if n_id else None
        if n_node is None or n_node.op_type not in ("Div", "Mul"):
            continue
        if _l2_of(ctx, n_node.input[0], x):
            g_name = n_node.input[0]
            break
        if n_node.op_type == "Mul" and _l2_of(ctx, n_node.input[1], x):
            g_name = n_node.input[1]
            break
    else:
        return None
    g, c = known.get(g_name), _scale_moments(ctx, n_node, g_name, rank)
    if g is None or c is None:
        return None
    g_mean, g_var = lift(g.mean, rank), lift(g.var, rank)
    second_g = g_var + g_mean**2
    with np.errstate(divide="ignore", invalid="ignore"):
        k = _gamma_shape(np.where(second_g > 0, g_mean**2 / second_g, 1.0))
    x_moments = inputs[xi]
    mu, var = lift(x_moments.mean, rank), lift(x_moments.var, rank)
    n = _group_size(ctx, g_name)
    inv_k = _independent_inverse_shape(x_moments, rank, n)
    if inv_k is not None:
        k = 1 / np.maximum(inv_k, 1e-12)
    # E[1/G] = Gamma(k - 1/2) / Gamma(k) (k / E[Q])^(1/2), E[Q] = n E[x^2]
    q_mean = n * (var + mu**2)
    k_half = np.maximum(k, 0.75)
    inverse = np.exp(gammaln(k_half - 0.5) - gammaln(k_half)) * np.sqrt(
        k_half / np.maximum(q_mean, 1e-300))
    mean = mu * (g_mean + var * inverse) * c[0]
    second = q_mean**2 / n * (1 + 1 / k) * c[1]
    return mean, np.maximum(second - mean**2, 0.0)


__all__ = ["normalisation_degree", "normalisation_tokens", "response_normalised", "row_normalised",
           "row_scale"]
