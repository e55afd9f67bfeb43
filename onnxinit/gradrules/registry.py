"""The registry of backward moment rules: (domain, op_type) -> rule, with the forward rules'
registry class (:mod:`onnxinit.rules.registry`: opset ranges, ``override=True`` for plugins).

A backward rule is a pure function ``f(grads: list[Gradient | None], ctx: GradContext) ->
list[Gradient | None]``: the gradient statistics of each output (None where no gradient
reaches it) in, one entry per input out: the statistics of dL/d(input) for signal inputs, of
dL/d(parameter) per element for parameter inputs (weights, biases, scales), None elsewhere.
"""

from __future__ import annotations

from ..rules.registry import RuleRegistry

REGISTRY = RuleRegistry()
rule = REGISTRY.rule
