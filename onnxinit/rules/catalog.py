"""The rules in use: the built-in rule modules and the plugins of the ``onnxinit.rules``
entry-point group, loaded into :data:`~onnxinit.rules.registry.REGISTRY` on the first lookup.

Loading is lazy (by module name) so that importing onnxinit does not import scipy and every
rule module; each rule module imports the registry, never this module. A plugin's entry point
names a module (or a callable taking no argument) that registers its rules on import; a plugin
that fails to load is logged and skipped.
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points

from .registry import REGISTRY, Registration

log = logging.getLogger("onnxinit")

BUILTIN_MODULES = (
    "onnxinit.rules.activations",
    "onnxinit.rules.arithmetic",
    "onnxinit.rules.attention",
    "onnxinit.rules.chi_square",
    "onnxinit.rules.dropout",
    "onnxinit.rules.edgeworth",
    "onnxinit.rules.energy_mixture",
    "onnxinit.rules.fused_ahead",
    "onnxinit.rules.inverse_trig",
    "onnxinit.rules.linear",
    "onnxinit.rules.normalised_chain",
    "onnxinit.rules.normalization",
    "onnxinit.rules.pooling",
    "onnxinit.rules.pool_pairs",
    "onnxinit.rules.quadratic_form_law",
    "onnxinit.rules.random_draws",
    "onnxinit.rules.recurrent",
    "onnxinit.rules.reduce",
    "onnxinit.rules.reduce_prod",
    "onnxinit.rules.resize",
    "onnxinit.rules.rounding",
    "onnxinit.rules.scatter",
    "onnxinit.rules.shape",
    "onnxinit.rules.softmax",
    "onnxinit.rules.topk",
)
PLUGIN_GROUP = "onnxinit.rules"
_STATE = {"loaded": False}


def load_rules() -> None:
    """Import the built-in rule modules, then the plugins (once per process)."""
    if _STATE["loaded"]:
        return
    _STATE["loaded"] = True
    for name in BUILTIN_MODULES:
        importlib.import_module(name)
    for ep in entry_points(group=PLUGIN_GROUP):
        with REGISTRY.registering_as(f"plugin:{ep.name}"):
            try:
                target = ep.load()
                if callable(target):
                    target()
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break analysis
                log.warning("rules plugin %s failed to load: %s", ep.name, exc)


def lookup(domain: str, op_type: str, opset: int) -> Registration | None:
    """The rule for ``op_type`` at ``opset`` (an override registered later takes precedence)."""
    load_rules()
    return REGISTRY.lookup(domain, op_type, opset)


def registered() -> list[Registration]:
    """The rule in effect for each op, sorted by (domain, op_type)."""
    load_rules()
    return REGISTRY.registered()
