"""Piecewise-constant element-wise maps: Sign, Floor, Ceil, Round (``y = f(x)`` integrated by
the composite rule over their jumps, :mod:`.elementwise`)."""

from __future__ import annotations

import numpy as np

from .context import RuleContext
from .elementwise import ElementwiseFn, elementwise_rule


@elementwise_rule("Sign")
def sign(ctx: RuleContext, rank):
    """y = sign(x) in {-1, 0, 1}."""
    return ElementwiseFn(("Sign",), np.sign)


@elementwise_rule("Floor")
def floor(ctx: RuleContext, rank):
    """y = floor(x)."""
    return ElementwiseFn(("Floor",), np.floor)


@elementwise_rule("Ceil")
def ceil(ctx: RuleContext, rank):
    """y = ceil(x)."""
    return ElementwiseFn(("Ceil",), np.ceil)


@elementwise_rule("Round")
def round_half_even(ctx: RuleContext, rank):
    """y = round(x), half to even as ONNX."""
    return ElementwiseFn(("Round",), np.round)
