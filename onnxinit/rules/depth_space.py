"""DepthToSpace and SpaceToDepth: channels move to b x b spatial blocks or back, so each output
channel's statistics are those of the input channels that land in it."""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from .context import RuleContext, signal
from .layout import scalar_of
from .registry import rule


@rule("DepthToSpace", "SpaceToDepth")
def depth_space(inputs, ctx: RuleContext):
    """Channels move to b x b spatial blocks (or back). DepthToSpace: output channel c gets the
    b^2 input channels k C' + c (DCR) or c b^2 + k (CRD), equally often: E = mean_k mu,
    Var = mean_k (nu + mu^2) - E^2. SpaceToDepth: output channel k C + c is input channel c."""
    x = signal(inputs, 0)
    if x.is_scalar:
        return [scalar_of(x)]
    b = int(ctx.attr("blocksize"))
    c_in = ctx.in_shape(0)[1]
    mu, nu = x.values_along(1, c_in)
    if ctx.node.op_type == "SpaceToDepth":
        return [Moments.along(np.tile(mu, b * b), np.tile(nu, b * b), 1, 4)]
    c_out = c_in // (b * b)
    if ctx.attr("mode", "DCR") == "CRD":
        mu, nu = mu.reshape(c_out, b * b), nu.reshape(c_out, b * b)
    else:
        mu, nu = mu.reshape(b * b, c_out).T, nu.reshape(b * b, c_out).T
    mean = mu.mean(axis=1)
    return [Moments.along(mean, (nu + mu**2).mean(axis=1) - mean**2, 1, 4)]


