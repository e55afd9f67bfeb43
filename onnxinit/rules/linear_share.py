"""A sum of per-channel linear images of one tensor: the covariance of Add/Sub operands.

Re-parameterisable blocks in their training form (MobileOne, FastViT, RepGhost, RepVGG) sum
``BN(x)``, ``BN(dw1x1(x))`` and ``BN(dw3x3_i(x))`` of one tensor x, and FastViT's RepMixer
computes ``x + s (mixer(x) - norm(x))`` with both sides holding such terms. The sum rules take
the operands as independent; they are not. Each operand is written as a sum of signed terms

    t = a_c (K_c * x_c) + const

where x is a base tensor, ``K_c`` a depthwise stride-1 kernel (a 1x1 identity for x itself)
and ``a_c`` a product of per-channel scales: a constant factor, or a BatchNormalization
(batch statistics, as the analysis takes it) ``a_c = gamma_c / sqrt(Var_c(input) + eps)``.
The walk goes back through Add/Sub of two signals (both sides become terms), Add/Sub/Mul/Div
by a per-channel constant, BatchNormalization, one depthwise Conv per term, Identity and
Dropout (the identity, as the analysis takes it); any other producer is the term's base. Two
terms on one base x co-vary per channel as

    Cov_c = a1_c a2_c nu_c sum_{t, t'} K1_c(t) K2_c(t') rho_c(t - t' + o1 - o2)

(``nu_c`` x's variance, ``rho_c`` its spatial correlation (independent positions where none is
carried), ``o`` each kernel's origin, -pad), and the sum's variance gains ``+- 2 sum Cov`` over
the pairs of terms of the two operands. A 1x1 depthwise kernel against the identity gives
``a1 a2 w_c nu_c`` exactly: ``BN(x) + BN(dw1x1(x))`` has variance 4 or 0 per channel.

The variance is written per position class (the channel's correlation coefficient times the
class's ``sqrt(Va Vb)``) and replaces whatever covariance another sum rule found. Where every
term reads one base x with a non-Gaussian law (a ReLU map's), the sum's law is ``g_c x + e``,
``g_c = Cov(sum, x) / Var x``, e Gaussian and independent of x with the rest of the moments
(exact when every term is a per-channel multiple of x); elsewhere it is a Gaussian per class.

Fires only where two operands share a base and some shared pair passes a BatchNorm or a Conv
(a plain ``x + c x`` is the element-wise rules'). Not modelled: the border (zero padding;
positions taken stationary), BatchNorm's 1/n batch-statistic corrections, covariances between
terms on different bases (independent, as before), the law of a sum over several bases, and the
sum's spatial correlation (the other rules' kept).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..moments import Moments
from ..spatial import positions, take_cells
from .context import RuleContext, RuleError
from .mixture import components, lift

MAX_TERMS = 16  # terms per operand, at most
MAX_NODES = 48  # nodes walked back per operand, at most


@dataclass(frozen=True)
class Term:
    """``scale_c (kernel_c * base_c)`` with the kernel's origin (-pad) per spatial axis;
    ``linear``: a BatchNorm or Conv lies on the path."""

    base: str
    scale: np.ndarray  # [C]
    kernel: np.ndarray | None  # [C, k...] or None for the identity
    origin: tuple[int, ...]
    linear: bool


def _channel_const(value, channels: int, rank: int) -> np.ndarray | None:
    """A constant that is a scalar or varies along the channel axis only, as [C]."""
    if value is None:
        return None
    c = lift(np.asarray(value, np.float64), rank)
    if c.ndim > rank or not np.all(np.isfinite(c)):
        return None
    if c.ndim == 0 or c.size == 1:
        return np.full(channels, float(c.reshape(-1)[0]))
    if c.ndim == rank and c.shape[1] == channels and c.size == channels:
        return c.reshape(channels)
    return None


def _bn_scale(ctx: RuleContext, nctx: RuleContext, channels: int) -> np.ndarray | None:
    """A BatchNormalization's per-channel scale with batch statistics, ``gamma_c /
    sqrt(Var_c(input) + eps)``, from its input's propagated moments."""
    known = ctx.known
    node = nctx.node
    x = known.get(node.input[0]) if known is not None else None
    gamma = nctx.const(1)
    if x is None or gamma is None or np.size(gamma) != channels:
        return None
    _, var = x.values_along(1, channels)  # over the channel's positions, spread included
    eps = float(nctx.attr("epsilon", 1e-5))
    return np.asarray(gamma, np.float64).reshape(channels) / np.sqrt(var + eps)


def _depthwise(nctx: RuleContext, channels: int):
    """(kernel [C, k...], origin) of a stride-1 depthwise Conv keeping the spatial size."""
    node, graph = nctx.node, nctx.graph
    w = graph.value(node.input[1]) if len(node.input) > 1 else None
    if w is None or np.ndim(w) < 3 or np.shape(w)[0] != channels or np.shape(w)[1] != 1:
        return None
    axes = np.ndim(w) - 2
    if nctx.attr("group", 1) != channels or nctx.attr("auto_pad", "NOTSET") not in ("NOTSET", ""):
        return None
    if any(s != 1 for s in nctx.attr("strides", [1] * axes)) or any(
            d != 1 for d in nctx.attr("dilations", [1] * axes)):
        return None
    try:
        if tuple(nctx.in_shape(0)) != tuple(nctx.out_shape(0)):
            return None
    except RuleError:  # no static shape: not a term
        return None
    pads = nctx.attr("pads", [0] * 2 * axes)
    return np.asarray(w, np.float64)[:, 0], tuple(-int(p) for p in pads[:axes])


def _terms(ctx: RuleContext, name: str, channels: int, rank: int,
           kept: frozenset = frozenset()) -> list[Term] | None:
    """The operand ``name`` as a sum of terms (module docstring); None past the caps. A sum is
    split only above any BatchNorm or Conv of the term (below one, it is the term's base: a
    residual stream), and never at a tensor of ``kept``."""
    graph = ctx.graph
    out: list[Term] = []
    pending = [(name, np.ones(channels), None, None, False)]
    visited = 0
    while pending:
        current, scale, kernel, origin, linear = pending.pop()
        visited += 1
        if visited > MAX_NODES or len(out) > MAX_TERMS:
            return None
        node_id = graph.producer.get(current)
        node = graph.node(node_id) if node_id is not None else None
        op = node.op_type if node is not None else None
        nctx = ctx.for_node(node_id) if node is not None else None
        signals = [i for i in (node.input if node is not None else []) if i
                   and not graph.is_constant(i)]
        if op in ("Add", "Sub") and len(node.input) == 2 and len(signals) == 2:
            if linear or current in kept:
                out.append(Term(current, scale, kernel, origin, linear))
                continue
            pending.append((node.input[0], scale, kernel, origin, linear))
            sign = -1.0 if op == "Sub" else 1.0
            pending.append((node.input[1], sign * scale, kernel, origin, linear))
            continue
        if op in ("Add", "Sub", "Mul", "Div") and len(node.input) == 2 and len(signals) == 1:
            index = 0 if node.input[0] == signals[0] else 1
            c = _channel_const(graph.value(node.input[1 - index]), channels, rank)
            if c is not None:
                if op == "Sub" and index == 1:
                    scale = -scale
                elif op == "Mul":
                    scale = scale * c
                elif op == "Div" and index == 0 and np.all(c != 0):
                    scale = scale / c
                elif op == "Div":
                    c = None
            if c is not None:
                pending.append((signals[0], scale, kernel, origin, linear))
                continue
        elif op == "BatchNormalization" and node.input[0] == signals[0] and len(signals) == 1:
            a = _bn_scale(ctx, nctx, channels)
            if a is not None:
                pending.append((signals[0], scale * a, kernel, origin, True))
                continue
        elif op == "Conv" and kernel is None and len(signals) == 1 and node.input[0] == signals[0]:
            made = _depthwise(nctx, channels)
            if made is not None:
                pending.append((signals[0], scale, made[0], made[1], True))
                continue
        elif op in ("Identity", "Dropout") and not (op == "Dropout" and ctx.settings.dropout):
            pending.append((node.input[0], scale, kernel, origin, linear))
            continue
        out.append(Term(current, scale, kernel, origin, linear))
    return out


def _kernel(term: Term, axes: int):
    if term.kernel is None:
        return np.ones((1,) * axes), (0,) * axes
    return term.kernel, term.origin


def _pair_covariance(t1: Term, t2: Term, x: Moments, channels: int, axes: int) -> np.ndarray:
    """Per channel ``a1 a2 nu sum_{t,t'} K1(t) K2(t') rho(t - t' + o1 - o2)``."""
    _, nu = x.values_along(1, channels)
    k1, o1 = _kernel(t1, axes)
    k2, o2 = _kernel(t2, axes)
    corr = x.spatial.corr if x.spatial is not None else None
    rho, radius = None, (0,) * axes
    if corr is not None and corr.rho.ndim == 1 + axes:
        rho = np.broadcast_to(corr.rho, (channels,) + corr.rho.shape[1:])
        radius = corr.radius
    k1 = np.broadcast_to(k1, (channels,) + np.shape(k1)[-axes:]) if np.ndim(k1) > axes else \
        np.broadcast_to(k1, (channels,) + np.shape(k1))
    k2 = np.broadcast_to(k2, (channels,) + np.shape(k2)[-axes:]) if np.ndim(k2) > axes else \
        np.broadcast_to(k2, (channels,) + np.shape(k2))
    total = np.zeros(channels)
    for i in np.ndindex(*k1.shape[1:]):
        for j in np.ndindex(*k2.shape[1:]):
            lag = tuple(a - b + p - q for a, b, p, q in zip(i, j, o1, o2))
            if all(v == 0 for v in lag):
                r = np.ones(channels)
            elif rho is not None and all(abs(v) <= R for v, R in zip(lag, radius)):
                r = rho[(slice(None),) + tuple(v + R for v, R in zip(lag, radius))]
            else:
                continue
            total += k1[(slice(None),) + i] * k2[(slice(None),) + j] * r
    return t1.scale * t2.scale * nu * total


def shared_covariance(inputs, ctx: RuleContext) -> np.ndarray | None:
    """Per channel ``Cov(a, b)`` of Add/Sub's two signal operands that share a base through a
    BatchNorm or Conv (module docstring); None where they do not."""
    node, graph = ctx.node, ctx.graph
    if node.op_type not in ("Add", "Sub") or len(inputs) != 2 or any(m is None for m in inputs):
        return None
    if ctx.known is None:
        return None
    try:
        shape = ctx.out_shape(0)
    except RuleError:  # no static shape: no rule
        return None
    if len(shape) < 3 or any(graph.shape(i) != tuple(shape) for i in node.input[:2]):
        return None
    channels, rank, axes = int(shape[1]), len(shape), len(shape) - 2
    kept: frozenset = frozenset()
    for _ in range(3):  # the bases below a BatchNorm or Conv are not split on the other side
        sides = [_terms(ctx, name, channels, rank, kept) for name in node.input[:2]]
        if any(s is None for s in sides):
            return None
        found = frozenset(t.base for side in sides for t in side if t.linear)
        if found <= kept:
            break
        kept = kept | found
    cov, fired = np.zeros(channels), False
    for t1 in sides[0]:
        for t2 in sides[1]:
            if t1.base != t2.base or not (t1.linear or t2.linear):
                continue
            x = ctx.known.get(t1.base)
            if x is None or graph.shape(t1.base) != tuple(shape):
                return None
            cov = cov + _pair_covariance(t1, t2, x, channels, axes)
            fired = True
    if not fired:
        return None
    return cov, sides


def _class_variance(m: Moments, out_maps, shape) -> np.ndarray | None:
    """Operand ``m``'s variance at each of the output's position classes ``[1, C, K...]``."""
    sp = positions(m, shape)
    if sp is None:
        return None
    firsts = [np.array([int(np.argmax(om == k)) for k in range(int(om.max()) + 1)])
              for om in out_maps]
    selection = [np.asarray(mp)[f] for mp, f in zip(sp.maps, firsts)]
    return lift(take_cells(sp.cells, selection).var, len(shape))


def with_covariance(inputs, out: Moments, cov: np.ndarray, sign: float, shape) -> Moments:
    """``out`` (the rules' result: its means, position classes and correlation kept) with the
    variance ``Var a + Var b +- 2 Cov`` per channel; at each position class the channel's
    correlation coefficient ``Cov / sqrt(Va Vb)`` times that class's ``sqrt(Va Vb)`` (the
    border's smaller variance scales its covariance). Described as Gaussian (its mixture and
    source dropped)."""
    rank, channels = len(shape), cov.size
    cshape = (1, channels) + (1,) * (rank - 2)
    va, vb = (m.values_along(1, channels)[1] for m in inputs)
    denom = np.sqrt(va * vb)
    coef = np.where(denom > 0, cov / np.where(denom > 0, denom, 1.0), 0.0).reshape(cshape)
    var = np.maximum(va + vb + 2.0 * sign * cov, 0.0).reshape(cshape)
    mean = np.broadcast_to(lift(out.mean, rank),
                           np.broadcast_shapes(np.shape(lift(out.mean, rank)), var.shape))
    spatial = out.spatial
    if spatial is not None:
        cells = spatial.cells
        parts = [_class_variance(m, spatial.maps, shape) for m in inputs]
        if any(p is None for p in parts):
            return out
        cell_var = parts[0] + parts[1] + 2.0 * sign * coef * np.sqrt(parts[0] * parts[1])
        spatial = replace(spatial, cells=Moments(cells.mean, np.maximum(cell_var, 0.0)))
    return Moments(np.array(mean), var, None, None, out.tokens, out.rows, spatial)


def shared_sum(inputs, ctx: RuleContext, out: Moments) -> Moments:
    """``out``, the rules' result for Add/Sub, with its variance the operands' plus the shared
    terms' covariance where the operands share a base (module docstring; whatever covariance
    another rule found is replaced); else ``out`` unchanged."""
    found = shared_covariance(inputs, ctx)
    if found is None:
        return out
    cov, sides = found
    sign = -1.0 if ctx.node.op_type == "Sub" else 1.0
    shaped = with_covariance(inputs, out, cov, sign, ctx.out_shape(0))
    return _with_base_law(ctx, shaped, sides, sign) or shaped


def _with_base_law(ctx: RuleContext, out: Moments, sides, sign: float) -> Moments | None:
    """Where every term reads one base x that carries a law (a ReLU map's), the sum as
    ``g_c x + e``: ``g_c = Cov(sum, x) / Var x`` from the terms, e Gaussian and independent of
    x with the rest of the moments (exact when every term is x's own per-channel multiple: a
    depthwise 1x1 conv through BatchNorms). None elsewhere."""
    bases = {t.base for side in sides for t in side}
    if len(bases) != 1 or out.spatial is None:
        return None
    base = bases.pop()
    x = ctx.known.get(base)
    shape = ctx.out_shape(0)
    rank, channels, axes = len(shape), int(shape[1]), len(shape) - 2
    if x is None or ctx.graph.shape(base) != tuple(shape):
        return None
    _, nu = x.values_along(1, channels)
    unit = Term(base, np.ones(channels), None, (0,) * axes, False)
    cov = sum(_pair_covariance(t, unit, x, channels, axes) for t in sides[0]) + sign * sum(
        _pair_covariance(t, unit, x, channels, axes) for t in sides[1])
    g = np.where(nu > 0, cov / np.where(nu > 0, nu, 1.0), 0.0).reshape((1, channels) + (1,) * axes)
    sp = positions(x, shape)
    spatial = out.spatial
    firsts = [np.array([int(np.argmax(om == k)) for k in range(int(om.max()) + 1)])
              for om in spatial.maps]
    xc = take_cells(sp.cells, [np.asarray(mp)[f] for mp, f in zip(sp.maps, firsts)])
    parts = components(xc, rank)
    if parts is None or parts[0].shape[0] == 1:
        return None
    w, m, v = parts
    cells = spatial.cells
    mean_e = lift(cells.mean, rank) - g * lift(xc.mean, rank)
    var_e = np.maximum(lift(cells.var, rank) - g * g * lift(xc.var, rank), 0.0)
    mixture = (w, g * m + mean_e, g * g * v + var_e)
    return replace(out, spatial=replace(spatial, cells=Moments(cells.mean, cells.var, None,
                                                                mixture)))


__all__ = ["shared_covariance", "shared_sum", "with_covariance"]
