"""The backward rules in use: the built-in modules, imported by name on the first lookup (so
that importing onnxinit does not import them all; each imports the registry, never this
module)."""

from __future__ import annotations

import importlib

from ..rules.registry import Registration
from .registry import REGISTRY

BUILTIN_MODULES = (
    "onnxinit.gradrules.activations",
    "onnxinit.gradrules.arithmetic",
    "onnxinit.gradrules.attention",
    "onnxinit.gradrules.linear",
    "onnxinit.gradrules.normalization",
    "onnxinit.gradrules.pooling",
    "onnxinit.gradrules.reduce",
    "onnxinit.gradrules.shape",
    "onnxinit.gradrules.softmax",
)
_STATE = {"loaded": False}


def load_rules() -> None:
    if _STATE["loaded"]:
        return
    _STATE["loaded"] = True
    for name in BUILTIN_MODULES:
        importlib.import_module(name)


def lookup(domain: str, op_type: str, opset: int) -> Registration | None:
    """The backward rule for ``op_type`` at ``opset``, or None."""
    load_rules()
    return REGISTRY.lookup(domain, op_type, opset)


def registered() -> list[Registration]:
    load_rules()
    return REGISTRY.registered()
