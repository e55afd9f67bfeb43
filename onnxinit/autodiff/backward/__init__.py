"""Backward rules, one module per op family; importing this package registers them all."""

from __future__ import annotations

from . import activations, arithmetic, linear, pooling, reduce, scatter, shape, softmax  # noqa: F401
from .registry import RULES, backward

__all__ = ["RULES", "backward"]
