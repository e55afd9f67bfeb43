"""Backward rule of Softmax: ``dx_k = p_k (dy_k - sum_j p_j dy_j)`` along the axis (K
elements). A mean shared by the row's dy cancels; with the rest independent across the row::

    E[dx_k^2] = Var[dy] E[p_k^2 (1 - 2 p_k + sum_j p_j^2)],   E[dx] = 0

the expectation over the rows of the forward logits (Monte Carlo, :mod:`.rows`; over the last
axis, up to :data:`.pairs.MAX_SIDE` keys). Otherwise, with E[p^2] from the forward moments of
the output and the moment closure E[p^3] ~ E[p^2]^2 / E[p] (exact for a constant row):
``Var[dy] (E[p^2] - 2 E[p^3] + K E[p^2]^2)``.

When the output gradient carries its second moments over the last two axes (``pair``, from
the attention MatMul P V, :mod:`.attention`), the rule follows them instead
(:func:`.pairs.softmax_backward`): what a row's dP share cancels, what the queries' dP share
passes on (along the query axis, to the keys' gradient); the rows weighted by their query's
share of dP (a zero-padded query's rows, whose dP is zero, count for nothing).
"""

from __future__ import annotations

import numpy as np

from . import pairs
from .logit_queries import query_correlation
from .rows import logits_of, row_stats
from .context import GradContext
from .gradient import Gradient
from .registry import rule


@rule("Softmax")
def softmax(grads, ctx: GradContext):
    """See the module docstring."""
    g = grads[0]
    shape = ctx.out_shape()
    axis = int(ctx.attr("axis", -1)) % len(shape)
    k = shape[axis]
    logits = logits_of(ctx.graph, ctx.forward, ctx.node.input[0], shape) \
        if ctx.node.input[0] in ctx.forward else None
    if g.pair is not None and logits is not None and axis == len(shape) - 1 and pairs.fits(shape):
        weights = np.diag(pairs.along(g.pair, -2))
        rho = query_correlation(ctx.graph, ctx.forward, ctx.node.input[0], weights)
        rows = row_stats(*logits, query_weights=weights, query_corr=rho)
        p = pairs.softmax_backward(g.pair, rows)
        return [Gradient(0.0, max(pairs.second(p), 0.0),
                         tokens=pairs.token_field(p, -2, len(shape)), pair=p)]
    if axis == len(shape) - 1 and k <= pairs.MAX_SIDE and logits is not None:
        _, v = g.total()
        return [Gradient.scalar(0.0, v * max(row_stats(*logits).w_diag, 0.0))]
    p_mean, p_var = ctx.y(0).total()
    p2 = p_var + p_mean**2
    p3 = p2 * p2 / max(p_mean, 1e-30)
    _, v = g.total()
    return [Gradient.scalar(0.0, v * max(p2 - 2 * p3 + k * p2 * p2, 0.0))]

