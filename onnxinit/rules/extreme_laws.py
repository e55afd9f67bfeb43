"""Laws of an element-wise Max or Min of two or more operands, for the Max/Min rule
(:func:`.arithmetic.extreme`): Clark's closed form for independent Gaussians, the fused
function of one common ancestor, and Monte Carlo from the operands' sources."""

from __future__ import annotations

import numpy as np

from .. import special
from ..moments import Elementwise
from .context import RuleContext, RuleError
from .elementwise import apply_fn
from .gaussian import compose
from .grids import out_rank
from .mixture import lift


def clark(ma, va, mb, vb, minimum: bool):
    """Max (Min) of independent Gaussians (Clark 1961): theta = sqrt(va + vb),
    alpha = (ma - mb) / theta, E = ma Phi(alpha) + mb Phi(-alpha) + theta phi(alpha),
    E[max^2] = (ma^2+va) Phi(alpha) + (mb^2+vb) Phi(-alpha) + (ma+mb) theta phi(alpha);
    min = a + b - max, min^2 = a^2 + b^2 - max^2."""
    theta = np.sqrt(va + vb)
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.where(theta > 0, (ma - mb) / np.where(theta > 0, theta, 1.0), 0.0)
    cdf, cdf_neg = special.ndtr(alpha), special.ndtr(-alpha)
    pdf = np.exp(-0.5 * alpha**2) / np.sqrt(2 * np.pi)
    e = ma * cdf + mb * cdf_neg + theta * pdf
    e2 = (ma**2 + va) * cdf + (mb**2 + vb) * cdf_neg + (ma + mb) * theta * pdf
    e = np.where(theta > 0, e, np.maximum(ma, mb))
    e2 = np.where(theta > 0, e2, np.maximum(ma, mb) ** 2)
    if minimum:
        e, e2 = ma + mb - e, ma**2 + va + mb**2 + vb - e2
    return e, np.maximum(e2 - e**2, 0.0)


def fused_extreme(inputs, ctx: RuleContext, minimum: bool):
    """Max/Min of two signals that are element-wise functions f_a, f_b of one ancestor T
    (``ctx.fusion``; LeakyRelu written as Max(x, 0.2 x)): h(z) = max(f_a(z), f_b(z)) over T's
    distribution."""
    fusion = ctx.fusion
    if fusion is None:
        return None
    fa, fb = compose(fusion.chain_a), compose(fusion.chain_b)
    pick = np.minimum if minimum else np.maximum
    key = ("FusedMin" if minimum else "FusedMax",
           tuple(f.key for f in fusion.chain_a), tuple(f.key for f in fusion.chain_b))  # fmt: skip
    h = Elementwise(key, lambda z: pick(fa(z), fb(z)))
    shape = ctx.graph.shape(fusion.tensor)
    rank = out_rank(ctx)
    if shape is not None and len(shape) != rank:
        return None
    try:
        return [apply_fn(fusion.moments, h, rank)]
    except RuleError:
        return None


def monte_carlo_extreme(signals, consts, ctx: RuleContext, rank: int, minimum: bool):
    """Max/Min of independent signals (sampled from their sources) and constants, per cell of
    the broadcast grid of their statistics."""
    arrays = [a for m in signals for a in (lift(m.mean, rank), lift(m.var, rank))] + consts
    grid = np.broadcast_shapes(*(np.shape(a) for a in arrays))
    size = int(np.prod(grid)) if grid else 1
    if size > 4096:
        raise RuleError("too many distinct statistics for a Monte Carlo max")
    n = max(20_000, 4_000_000 // size)
    rng = ctx.rng()
    pick = np.minimum if minimum else np.maximum
    out = None
    for m in signals:
        src = m.source
        if src is not None and max(np.ndim(src.mean), np.ndim(src.var)) <= rank:
            src_mean, src_var = lift(src.mean, rank), lift(src.var, rank)
            z = rng.standard_normal((n, *grid)) * np.sqrt(src_var) + src_mean
            z = compose(src.chain)(z)
        else:
            z = rng.standard_normal((n, *grid)) * np.sqrt(lift(m.var, rank)) + lift(m.mean, rank)
        out = z if out is None else pick(out, z)
    for c in consts:
        out = pick(out, c)
    return out.mean(axis=0), out.var(axis=0)
