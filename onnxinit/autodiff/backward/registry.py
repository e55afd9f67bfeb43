"""The backward-rule registry: op type -> rule.

A rule receives a :class:`~onnxinit.autodiff.context.BackwardContext` for one forward node and
the gradients of that node's outputs (``None`` for outputs that do not reach the loss), and
returns one gradient name per node input (``None`` where the input needs none). Rules emit only
standard ONNX ops through the context.
"""

from __future__ import annotations

from collections.abc import Callable

RULES: dict[str, Callable] = {}


def backward(*op_types: str):
    """Register the decorated function as the backward rule of ``op_types``."""

    def register(rule: Callable) -> Callable:
        for op_type in op_types:
            RULES[op_type] = rule
        return rule

    return register
