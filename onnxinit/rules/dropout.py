"""Dropout: the identity, unless the analysis applies training-mode dropout
(``settings.dropout``), then the moments of ``x * mask / (1 - p)``."""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from .activations import identity_fn
from .context import RuleContext, RuleError, signal
from .elementwise import elementwise_function
from .registry import rule


@elementwise_function("Dropout")
def dropout_function(ctx: RuleContext, rank):
    """y = x, unless the analysis applies training-mode dropout (then not a fixed function)."""
    return None if ctx.settings.dropout else identity_fn()


@rule("Dropout")
def dropout(inputs, ctx: RuleContext):
    """Identity unless the analysis applies training-mode dropout (``settings.dropout``), then
    with drop ratio p (attribute ``ratio`` before opset 12, input 1 from opset 12, default 0.5):

        E = mu,  Var = (nu + mu^2) / (1 - p) - mu^2

    The mask output gets None."""
    x = signal(inputs, 0)
    rest = [None] * (len(ctx.node.output) - 1)
    if not ctx.settings.dropout:
        return [x] + rest
    if ctx.opset < 12:
        p = float(ctx.attr("ratio", 0.5))
    elif ctx.has_input(1):
        value = ctx.const(1)
        if value is None:
            raise RuleError("the dropout ratio is not constant")
        p = float(np.asarray(value).reshape(()))
    else:
        p = 0.5
    if p <= 0.0:
        return [x] + rest
    if p >= 1.0:
        return [Moments(np.zeros_like(x.mean), np.zeros_like(x.var))] + rest
    var = x.second_moment() / (1.0 - p) - x.mean**2
    return [Moments(x.mean, var)] + rest
