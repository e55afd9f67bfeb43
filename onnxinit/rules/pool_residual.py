"""A sum or difference of an average pool and its own input, ``y = AveragePool(x) -/+ x``
(PoolFormer's token mixer ``pool(x) - x``, stride 1 and "same" padding).

The pool's output at a position reads that position's own value and its neighbours', so the
two operands are correlated: per output position class, with n_i the divisor of its window
(taps inside the input, or inside the padded input with ``count_include_pad``) and
``o_t`` the offset of tap t from the window's centre,

    Cov(p_i, x_i) = (1/n_i) sum_{t inside} rho_x(o_t) sqrt(nu_t nu_i)
    Var(y_i) = Var(p_i) + nu_i +/- 2 Cov(p_i, x_i),   E(y_i) = E(p_i) +/- mu_i

(rho_x: the input's spatial correlation, ``onnxinit.correlation``; 1 at offset 0 and 0
elsewhere where it carries none). Taken as independent, ``pool(x) - x`` on a 3x3 window of
independent positions came out ``(1 + 1/9) nu`` where it is ``(1 - 1/9) nu``; on a 2x2 map
(every window the whole map) 1.6x.

The output's correlation at offset d (interior, positions taken as stationary) adds the cross
terms ``Cov(p_i, x_{i+d}) + Cov(x_i, p_{i+d}) = (nu/K) sum_t [rho_x(d - o_t) + rho_x(d + o_t)]``
(K taps) to the operands' own covariances; a component shared by every position of a sample
(``floor``) cancels in the difference. Not modelled: windows with strides other than 1 (the
shapes then differ), the change of the cross terms near the border (a global mean of
``pool(x) - x`` nearly cancels, and how nearly is decided at the border: 12x over on an 8x8
map, as with the operands taken as independent).
"""

from __future__ import annotations

import numpy as np

from ..correlation import MAX_OFFSET, Correlation, independent, recentred
from ..moments import Moments
from ..spatial import attach, gather_taps, positions
from .context import RuleContext
from .pool_windows import cell_arrays, class_windows, pads, tap_counts, window_geometry


def _pool_of(ctx: RuleContext) -> tuple[int, str] | None:
    """(index of the operand that is an AveragePool of the other, the pool's node id)."""
    graph, names = ctx.graph, ctx.node.input
    if len(names) != 2:
        return None
    for i in (0, 1):
        node_id = graph.producer.get(names[i])
        if node_id is None:
            continue
        node = graph.node(node_id)
        if (node.op_type == "AveragePool" and node.domain in ("", "ai.onnx") and node.input
                and node.input[0] == names[1 - i]):
            return i, node_id
    return None


def pool_residual(inputs, ctx: RuleContext, op: str) -> Moments | None:
    """``AveragePool(x) -/+ x`` per output position class (module docstring); None when the
    node is not one, or its window moves or resizes the map."""
    if op not in ("Add", "Sub") or len(inputs) != 2 or any(m is None for m in inputs):
        return None
    found = _pool_of(ctx)
    if found is None:
        return None
    i, pool_id = found
    shape = ctx.graph.shape(ctx.node.input[1 - i])
    if (not shape or len(shape) < 3 or ctx.graph.shape(ctx.node.input[i]) != shape
            or ctx.graph.shape(ctx.node.output[0]) != shape):
        return None
    pool_ctx = ctx.for_node(pool_id)
    kernel, strides, dilations = window_geometry(pool_ctx)
    begins, _ = pads(pool_ctx, shape[2:], shape[2:], kernel, strides, dilations)
    if (any(s != 1 for s in strides)
            or any(b % d for b, d in zip(begins, dilations))
            or any(b // d >= k for b, d, k in zip(begins, dilations, kernel))):
        return None
    x, p = inputs[1 - i], inputs[i]
    sp, sp_p = positions(x, shape), positions(p, shape)
    if sp is None or sp_p is None:
        return None
    out_maps, taps = class_windows(pool_ctx, sp.maps)
    if any(not np.array_equal(a, b) for a, b in zip(out_maps, sp_p.maps)):
        return None
    channels = shape[1]
    mu, nu = cell_arrays(sp, channels)
    n = len(kernel)
    centre = tuple(b // d for b, d in zip(begins, dilations))
    offsets = [np.arange(k) * d - b for k, d, b in zip(kernel, dilations, begins)]
    nu_taps = gather_taps(nu, taps)  # [C, T..., R...]
    mu_taps = gather_taps(mu, taps)
    at_centre = (slice(None),) + centre
    nu_c, mu_c = nu_taps[at_centre], mu_taps[at_centre]  # [C, R...]
    inside = np.ones(())
    for t in taps:  # [T_0, ..., T_{n-1}, R_0, ..., R_{n-1}] by axis
        inside = np.multiply.outer(inside, (t >= 0).T.astype(np.float64))
    inside = np.moveaxis(inside, tuple(range(1, 2 * n, 2)), tuple(range(n, 2 * n)))
    divisor = tap_counts(taps, -1) if pool_ctx.attr("count_include_pad", 0) else tap_counts(taps, 0)
    own = sp.corr if sp.corr is not None else independent(1, shape[2:])
    rho_taps = _rho_at(own, offsets)  # [C or 1, T...]
    weights = rho_taps.reshape(rho_taps.shape + (1,) * n) * inside
    cov = (weights * np.sqrt(nu_taps * nu_c[(slice(None),) + (None,) * n])).sum(
        axis=tuple(range(1, 1 + n))) / divisor
    sign = -1.0 if op == "Sub" else 1.0
    p_mean, p_var = np.broadcast_arrays(sp_p.cells.mean, sp_p.cells.var)
    p_mean = np.broadcast_to(p_mean, (1, channels) + p_mean.shape[2:])[0]
    p_var = np.broadcast_to(p_var, (1, channels) + p_var.shape[2:])[0]
    mean = p_mean + sign * mu_c if i == 0 else mu_c + sign * p_mean
    var = p_var + nu_c + 2.0 * sign * cov
    var = np.maximum(var, 1e-12 * (p_var + nu_c))
    corr = _output_correlation(sp.corr, sp_p.corr, offsets, shape[2:], float(np.prod(kernel)),
                               np.asarray(p.var, np.float64).reshape(-1),
                               np.asarray(x.var, np.float64).reshape(-1), sign, channels)
    return attach(Moments(mean[None], var[None]), out_maps, corr)


def _rho_at(corr: Correlation, offsets) -> np.ndarray:
    """rho_x at every tap's offset from the centre: ``[C or 1, T_0, ...]``."""
    radius = [int(np.abs(o).max(initial=0)) for o in offsets]
    ext = recentred(corr.rho, 1, radius, corr.floor.reshape(-1))
    return ext[(slice(None),) + np.ix_(*[o + r for o, r in zip(offsets, radius)])]


def _output_correlation(cx: Correlation | None, cp: Correlation | None, offsets, sizes,
                        taps: float, nu_p: np.ndarray, nu_x: np.ndarray, sign: float,
                        channels: int) -> Correlation | None:
    """The interior correlation of ``p +/- x`` by offset (module docstring)."""
    if cx is None and cp is None:
        return None
    radius = [min(MAX_OFFSET, s - 1) for s in sizes]
    n = len(radius)
    nu_p = np.broadcast_to(nu_p, (channels,)) if nu_p.size in (1, channels) else None
    nu_x = np.broadcast_to(nu_x, (channels,)) if nu_x.size in (1, channels) else None
    if nu_p is None or nu_x is None:
        return None
    lead = (-1,) + (1,) * n
    cx = cx if cx is not None else independent(1, sizes)  # 1 at offset 0, 0 elsewhere
    cp = cp if cp is not None else independent(1, sizes)
    rho_x = recentred(cx.rho, 1, radius, cx.floor.reshape(-1))
    rho_p = recentred(cp.rho, 1, radius, cp.floor.reshape(-1))
    reach = [r + int(np.abs(o).max(initial=0)) for r, o in zip(radius, offsets)]
    ext = recentred(cx.rho, 1, reach, cx.floor.reshape(-1))
    cross = np.zeros((ext.shape[0],) + tuple(2 * r + 1 for r in radius))
    for tap in np.ndindex(*(len(o) for o in offsets)):
        o = [offsets[a][tap[a]] for a in range(n)]
        for s in (-1, 1):  # rho(d - o) and rho(d + o)
            index = tuple(slice(q - r - s * oa, q + r - s * oa + 1)
                          for q, oa, r in zip(reach, o, radius))
            cross = cross + ext[(slice(None),) + index]
    cov = rho_p * nu_p.reshape(lead) + rho_x * nu_x.reshape(lead) \
        + sign * cross * nu_x.reshape(lead) / taps
    floor_x, floor_p = cx.floor.reshape(-1), cp.floor.reshape(-1)
    far = floor_p * nu_p + floor_x * nu_x + 2.0 * sign * floor_x * nu_x
    at_zero = cov[(slice(None),) + tuple(radius)]
    safe = np.where(at_zero > 0, at_zero, 1.0)
    return Correlation(cov / safe.reshape(lead), far / safe)


__all__ = ["pool_residual"]
