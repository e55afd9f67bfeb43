"""The registry of token-field carriers: op type -> the function that maps a node's token
field (``Moments.tokens``) from its inputs to its outputs (:func:`.tokens.carry` calls them;
:mod:`.tokens` registers arithmetic, element-wise and normalization ops, :mod:`.token_layout`
the layout ops)."""

from __future__ import annotations

from collections.abc import Callable

from ..moments import Moments

CARRIERS: dict[str, Callable] = {}


def carrier(*ops: str):
    """Register the decorated function as the carrier of ``ops``."""
    def register(fn):
        for op in ops:
            CARRIERS[op] = fn
        return fn

    return register


def first_with_field(inputs) -> Moments:
    """The first input that carries a token field."""
    return next(m for m in inputs if m is not None and m.tokens is not None)
