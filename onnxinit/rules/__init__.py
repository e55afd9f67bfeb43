"""Moment-propagation rules: a registry keyed by (domain, op_type) and opset range.

A rule is a pure function ``f(inputs: list[Moments | None], ctx: RuleContext) -> list[Moments]``
(``None`` for inputs that are not signals: weights, shapes, integer ids). Register it with::

    @rule("Relu", "LeakyRelu")                       # default domain, every opset
    @rule("Dropout", since=12)                       # opset 12 and later
    @rule("MyOp", domain="com.example")              # a custom domain

Third-party packages extend the registry through the ``onnxinit.rules`` entry-point group: each
entry point names a module (or a callable taking no argument) that registers its rules on import.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

import numpy as np
import onnx

from ..moments import Moments

if TYPE_CHECKING:
    from ..graph import ModelGraph

log = logging.getLogger("onnxinit")

RuleFn = Callable[[list, "RuleContext"], list]

_BUILTIN_MODULES = (
    "activations",
    "arithmetic",
    "attention",
    "linear",
    "normalization",
    "pooling",
    "shape",
    "softmax",
)


@dataclass(frozen=True)
class Registration:
    domain: str
    op_type: str
    since: int
    until: int | None
    fn: RuleFn
    source: str  # "built-in" or the plugin's entry-point name

    def covers(self, opset: int) -> bool:
        return self.since <= opset and (self.until is None or opset <= self.until)


_REGISTRY: dict[tuple[str, str], list[Registration]] = {}
_loaded = False
_current_source = "built-in"


def _norm_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def rule(*op_types: str, domain: str = "", since: int = 1, until: int | None = None):
    """Register the decorated function as the rule for ``op_types`` in ``domain``."""

    def register(fn: RuleFn) -> RuleFn:
        for op_type in op_types:
            key = (_norm_domain(domain), op_type)
            _REGISTRY.setdefault(key, []).insert(
                0, Registration(key[0], op_type, since, until, fn, _current_source)
            )
        return fn

    return register


def _load_all() -> None:
    global _loaded, _current_source
    if _loaded:
        return
    _loaded = True
    for name in _BUILTIN_MODULES:
        importlib.import_module(f"{__name__}.{name}")
    for ep in entry_points(group="onnxinit.rules"):
        _current_source = f"plugin:{ep.name}"
        try:
            target = ep.load()
            if callable(target):
                target()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break analysis
            log.warning("rules plugin %s failed to load: %s", ep.name, exc)
        finally:
            _current_source = "built-in"


def lookup(domain: str, op_type: str, opset: int) -> Registration | None:
    """The rule for ``op_type`` at ``opset``; plugins registered later take precedence."""
    _load_all()
    for reg in _REGISTRY.get((_norm_domain(domain), op_type), []):
        if reg.covers(opset):
            return reg
    return None


def registered() -> list[Registration]:
    _load_all()
    return sorted(
        (regs[0] for regs in _REGISTRY.values()), key=lambda r: (r.domain, r.op_type)
    )


class RuleError(Exception):
    """Raised by a rule that cannot handle this node; propagation falls back to measuring it."""


@dataclass
class RuleContext:
    """What a rule may know about its node besides the input moments: attributes, static
    shapes, and the values of constant inputs (weights, shapes), folded on demand."""

    node: onnx.NodeProto
    node_id: str
    graph: ModelGraph
    options: dict = field(default_factory=dict)

    @cached_property
    def attrs(self) -> dict:
        return {a.name: onnx.helper.get_attribute_value(a) for a in self.node.attribute}

    @property
    def opset(self) -> int:
        return self.graph.opset

    def attr(self, name: str, default=None):
        value = self.attrs.get(name, default)
        return value.decode() if isinstance(value, bytes) else value

    def const(self, index: int) -> np.ndarray | None:
        """Value of constant input ``index``; None when absent or a signal."""
        inputs = self.node.input
        if index >= len(inputs) or not inputs[index]:
            return None
        return self.graph.value(inputs[index])

    def has_input(self, index: int) -> bool:
        return index < len(self.node.input) and bool(self.node.input[index])

    def in_shape(self, index: int = 0) -> tuple[int, ...]:
        shape = self.graph.shape(self.node.input[index]) if self.has_input(index) else None
        if shape is None:
            raise RuleError(f"input {index} of {self.node_id} has no static shape")
        return shape

    def out_shape(self, index: int = 0) -> tuple[int, ...]:
        outputs = self.node.output
        shape = self.graph.shape(outputs[index]) if index < len(outputs) else None
        if shape is None:
            raise RuleError(f"output {index} of {self.node_id} has no static shape")
        return shape

    def rng(self) -> np.random.Generator:
        """A generator seeded by the analysis seed and the node, so results are reproducible."""
        seed = self.options.get("seed", 0)
        return np.random.default_rng([seed, *self.node_id.encode()])


def signal(inputs: Sequence[Moments | None], index: int = 0) -> Moments:
    """Input ``index`` as Moments; a constant input becomes its exact moments."""
    value = inputs[index] if index < len(inputs) else None
    if value is None:
        raise RuleError(f"input {index} is not a signal")
    return value


__all__ = ["Moments", "RuleContext", "RuleError", "lookup", "registered", "rule", "signal"]
