"""Moment-propagation rules: one rule per op (and opset range), in a registry keyed by
(domain, op_type).

A rule is a pure function ``f(inputs: list[Moments | None], ctx: RuleContext) -> list[Moments]``
(``None`` for inputs that are not signals: weights, shapes, integer ids); it reads its node
through ``ctx`` and nothing else but the typed side information the propagator hands it
(``ctx.settings``, and ``ctx.fusion`` for rules registered with ``fusion=True``). Register one
with the decorator (see :mod:`.registry`)::

    from onnxinit.rules import rule, signal

    @rule("MyOp", domain="com.example")
    def my_op(inputs, ctx):
        x = signal(inputs, 0)
        ...

Third-party packages extend the registry through the ``onnxinit.rules`` entry-point group
(:mod:`.catalog`); overriding a built-in rule takes ``@rule(..., override=True)``.
"""

from __future__ import annotations

from ..moments import Moments
from .catalog import load_rules, lookup, registered
from .context import CommonAncestor, RuleContext, RuleError, RuleSettings, signal
from .registry import REGISTRY, Registration, RuleRegistrationError, RuleRegistry, rule

__all__ = ["REGISTRY", "CommonAncestor", "Moments", "Registration", "RuleContext", "RuleError",
           "RuleRegistrationError", "RuleRegistry", "RuleSettings", "load_rules", "lookup",
           "registered", "rule", "signal"]
