"""ReduceProd: the product of the reduced elements, taken as independent.

For y = prod_k x_k over K independent terms (per-index statistics broadcast along the reduced
axes, so terms that differ along them each enter with their own)::

    E[y]   = prod_k mu_k
    E[y^2] = prod_k (nu_k + mu_k^2)
    Var y  = E[y^2] - E[y]^2

Exact for independent terms of any law. Not modelled: correlated terms (the features of one
dense row, which share the row's input; a product over them is read as if they were
independent), where ``E[y]`` and ``E[y^2]`` take the terms' joint moments.
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from .context import RuleContext, RuleError, signal
from .gaussian import expand
from .reduce_axes import reduced_axes
from .registry import rule


@rule("ReduceProd")
def reduce_prod(inputs, ctx: RuleContext):
    """E = prod mu_k, E[y^2] = prod (nu_k + mu_k^2) over the K reduced (independent) terms."""
    x = signal(inputs, 0)
    x_shape = ctx.in_shape(0)
    rank = len(x_shape)
    axes = reduced_axes(ctx, rank)
    if axes is None:
        return [x]
    mu, nu = expand(np.asarray(x.mean, np.float64), rank), expand(np.asarray(x.var, np.float64), rank)
    grid = np.broadcast_shapes(mu.shape, nu.shape)
    full = tuple(x_shape[a] if a in axes else grid[a] for a in range(rank))
    mu, nu = np.broadcast_to(mu, full), np.broadcast_to(nu, full)
    with np.errstate(all="ignore"):
        mean = np.prod(mu, axis=axes, keepdims=True)
        second = np.prod(nu + mu * mu, axis=axes, keepdims=True)
        var = np.maximum(second - mean * mean, 0.0)
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(var))):
        raise RuleError("the product's moments overflow")
    if not ctx.attr("keepdims", 1):
        mean, var = np.squeeze(mean, axis=axes), np.squeeze(var, axis=axes)
    return [Moments(mean, var)]


__all__ = ["reduce_prod"]
