"""What a backward rule sees besides its outputs' gradients: everything a forward rule sees
(:class:`~onnxinit.rules.context.RuleContext`: the node, attributes, static shapes, constant
inputs) plus the forward moments of the node's tensors and the batch size."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..moments import Moments
from ..rules.context import RuleContext, RuleError


@dataclass
class GradContext(RuleContext):
    forward: Mapping[str, Moments] = field(default_factory=dict)
    batch: int = 1
    # gradients a rule sends past its own inputs: a fused element-wise node (GELU written as
    # x * Phi(x)) sends dy h'(T) straight to the common ancestor T
    redirect: dict = field(default_factory=dict)
    # the finished gradients of the tensors after this node (the sweep's results so far)
    gradients: Mapping[str, object] = field(default_factory=dict)

    def x(self, index: int = 0) -> Moments:
        """The forward moments of input ``index`` (RuleError when it is not a signal)."""
        name = self.node.input[index] if index < len(self.node.input) else ""
        if name not in self.forward:
            raise RuleError(f"input {index} of {self.node_id} has no forward moments")
        return self.forward[name]

    def y(self, index: int = 0) -> Moments:
        name = self.node.output[index] if index < len(self.node.output) else ""
        if name not in self.forward:
            raise RuleError(f"output {index} of {self.node_id} has no forward moments")
        return self.forward[name]

    def is_signal(self, index: int) -> bool:
        return self.has_input(index) and self.graph.is_signal(self.node.input[index])

    def is_parameter(self, index: int) -> bool:
        """Input ``index`` is (a layout view of) a float parameter of the model."""
        return self.has_input(index) and self.graph.parameter_of(self.node.input[index]) is not None


__all__ = ["GradContext", "RuleError"]
