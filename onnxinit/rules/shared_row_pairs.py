"""Where :mod:`.shared_row`'s formulas apply in a graph, and what they change: a Mul of two
element-wise functions of two dense projections of one row (its variance and energy excess),
and the square of a row with an energy excess (its variance, the mean over the row keeping its
covariance). Called by :func:`.feature_pairs.carry` after the node's rule."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..moments import Moments
from .context import RuleContext
from .fusion import ancestry
from .gaussian import compose
from .pair_algebra import NONE, Pairs, mean_energy, row_vars, scale_kurtosis
from .row_norm import without_casts
from .token_excess import product_terms
from .shared_row import (cross_variance, energy_degree, power_relvar, row_concentration,
                         shared_scale, square_excess_variance)


def _projection(ctx: RuleContext, name: str) -> tuple[str, str, tuple] | None:
    """(row, dense output, element-wise chain from the dense output to ``name``) when ``name``
    is an element-wise function of ``row @ W`` (W a constant matrix), else None."""
    graph = ctx.graph
    for tensor, chain in ancestry(name, ctx):
        node_id = graph.producer.get(tensor)
        if not node_id:
            return None
        node = graph.node(node_id)
        if node.op_type == "MatMul" and len(node.input) == 2:
            w = ctx.for_node(node_id).const(1)
            if w is not None and np.ndim(w) == 2 and graph.is_signal(node.input[0]):
                return without_casts(ctx, node.input[0]), tensor, chain
    return None


def shared_row_product(ctx: RuleContext, inputs: list, out: Moments, table: dict,
                       found: Pairs) -> tuple[Moments, Pairs] | None:
    """(the product's Moments, its Pairs) for ``a * b`` with a and b element-wise functions of
    two distinct dense projections of one row (:mod:`.shared_row`); None otherwise."""
    if ctx.node.op_type != "Mul" or any(m is None for m in inputs[:2]):
        return None
    pa, pb = (_projection(ctx, n) for n in ctx.node.input[:2])
    if pa is None or pb is None or pa[0] != pb[0] or pa[1] == pb[1]:
        return None
    known = ctx.known or {}
    row, ga, gb = known.get(pa[0]), known.get(pa[1]), known.get(pb[1])
    shape = ctx.graph.shape(pa[0])
    if row is None or ga is None or gb is None or not shape or not shape[-1]:
        return None
    rp = table.get(pa[0]) or NONE
    q = row_concentration(row_vars(row, shape[-1]), rp.squared)
    fa, fb = compose(pa[2]), compose(pb[2])
    (ma, va), (mb, vb) = ga.total(), gb.total()
    if not all(np.isfinite(x) for x in (ma, va, mb, vb)) or va <= 0 or vb <= 0:
        return None
    extra = cross_variance(fa, ma, va, fb, mb, vb, q)
    sa, sb = (float(_W @ np.square(f(m + np.sqrt(v) * _Z))) for f, m, v in
              ((fa, ma, va), (fb, mb, vb)))
    ea, eb = (float(_W @ f(m + np.sqrt(v) * _Z)) for f, m, v in ((fa, ma, va), (fb, mb, vb)))
    base = sa * sb - (ea * eb) ** 2
    if not base > 0:
        return None
    alpha_a, alpha_b = energy_degree(fa, ma, va), energy_degree(fb, mb, vb)
    excess = power_relvar(2 * q + rp.excess, alpha_a + alpha_b)
    scale = shared_scale(alpha_a, alpha_b, rp.excess / (1 + 2 * q))
    tokens = product_terms(rp.token_excess, alpha_a, alpha_b, q)
    if tokens is not None:  # the row's excess token by token (token_excess.py)
        scale, excess = tokens
    second = (sa * sb + extra) * scale
    moments = replace(out, var=out.var * ((second - (ea * eb) ** 2) / base), source=None,
                      mixture=None)
    # the shared energy's part of the marginal kurtosis (pair_algebra.scale_kurtosis), so that
    # a dense layer counts the product's own kurtosis alone as its inputs' independent part
    shared = scale_kurtosis(found.excess + excess, q) - scale_kurtosis(found.excess, q)
    return moments, replace(found, excess=found.excess + excess,
                            kurtosis=found.kurtosis + shared)


_Z, _W = np.polynomial.hermite_e.hermegauss(48)
_W = _W / _W.sum()


def _is_square(ctx: RuleContext) -> bool:
    node = ctx.node
    if node.op_type == "Mul":
        return len(node.input) == 2 and node.input[0] == node.input[1]
    if node.op_type == "Pow":
        e = ctx.const(1) if len(node.input) > 1 else None
        return e is not None and np.size(e) == 1 and float(np.ravel(e)[0]) == 2.0
    return False


def _fourth(m: Moments) -> float:
    """``mean(sigma^4)`` over the elements, each token's variance its own (the token field's
    profile ``diag(cov)``, mean 1, times the per-feature variance)."""
    v = np.asarray(m.var, np.float64)
    nu4 = float(np.mean(v * v))
    if m.tokens is not None:
        d = np.diag(m.tokens.cov)
        if not np.allclose(d, d.mean()):
            nu4 *= float(np.mean(d * d)) / float(np.mean(d)) ** 2
    return nu4


def squared_row(ctx: RuleContext, x: Moments, xp: Pairs, out: Moments,
                found: Pairs) -> tuple[Moments, Pairs] | None:
    """(Moments, Pairs) of ``x^2`` for a row with a positive energy excess (a scale mixture):
    the variance gains ``3 excess mean(sigma^4)``, and ``signed`` is scaled so that the
    covariance of two squares of one row (``signed Var``) is unchanged; None otherwise."""
    if xp.excess <= 0 or not _is_square(ctx):
        return None
    extra = square_excess_variance(xp.excess, _fourth(x))
    var = np.asarray(out.var, np.float64)
    mean_var = float(np.mean(var))
    if not (extra > 0 and mean_var > 0 and np.isfinite(extra)):
        return None
    factor = 1.0 + extra / mean_var
    return replace(out, var=var * factor, source=None, mixture=None), replace(found, signed=found.signed / factor)


def mean_square_diagonal(ctx: RuleContext, out: Moments, table: dict, d: int) -> Moments:
    """A mean over the row (D features) of ``x^2`` for a row whose energy excess e is negative
    (normalised, or partly: a residual sum of a normalised sublayer output and a small stream):
    the Pairs' law ``Var[sum x^2] = 2 tr C^2 + e (tr C)^2`` counts e on the diagonal too, which
    the mean over pairs (``signed``) leaves out: ``e mean(sigma^4) / D`` is added (at most
    removing 99.9% of the variance). A cancellation of order ``2 q`` then reads its remainder
    (Gemma 2's pre-feedforward norm of ``embedding + normalised attention``). ``out`` unchanged
    otherwise."""
    xp, x = _squared_row(ctx, table)
    if xp is None or x is None or xp.excess >= 0 or d < 2:
        return out
    var = np.asarray(out.var, np.float64)
    mean_var = float(np.mean(var))
    if not mean_var > 0:
        return out
    extra = xp.excess * _fourth(x) / d
    factor = max(1.0 + extra / mean_var, 1e-3)
    return replace(out, var=var * factor, source=None, mixture=None)


def _squared_row(ctx: RuleContext, table: dict) -> tuple:
    """(Pairs, Moments) of the row x whose square the mean reads (``Pow(x, 2)`` or ``x * x``),
    (None, None) when its input is not such a square."""
    node_id = ctx.graph.producer.get(ctx.node.input[0])
    square_ctx = ctx.for_node(node_id) if node_id else None
    if square_ctx is None or not _is_square(square_ctx):
        return None, None
    x_name = square_ctx.node.input[0]
    return table.get(x_name), (ctx.known or {}).get(x_name)


def mean_square_aligned(ctx: RuleContext, out: Moments, table: dict, d: int) -> Moments:
    """A mean over the row (D features) of ``x^2`` for a row whose mean vector lies along its
    covariance (:func:`.pair_algebra.mean_alignment`, ``mean_cross`` a): ``Cov(x_d^2, x_e^2) =
    2 C_de^2 + 4 mu_d mu_e C_de``, whose off-diagonal sum of the second term is ``4 (mu^T C mu
    - sum mu_d^2 nu_d)``: the variance of the mean gains ``4 a mean(mu^2 nu) / D`` (the pooled
    mean's share is counted by ``signed``). ``out`` unchanged otherwise."""
    xp, x = _squared_row(ctx, table)
    if xp is None or x is None or not xp.mean_cross or d < 2:
        return out
    extra = 4.0 * xp.mean_cross * mean_energy(x) / d
    var = np.asarray(out.var, np.float64)
    if not np.isfinite(extra) or not float(np.mean(var)) > 0:
        return out
    return replace(out, var=np.maximum(var + extra, var * 1e-3), source=None, mixture=None)


__all__ = ["mean_square_aligned", "mean_square_diagonal", "shared_row_product", "squared_row"]
