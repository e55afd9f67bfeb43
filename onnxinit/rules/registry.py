"""The rule registry: (domain, op_type) -> the rule for each opset range.

Register a rule with the decorator::

    @rule("Relu")                                    # default domain, every opset
    @rule("Dropout", since=12)                       # opset 12 and later
    @rule("MyOp", domain="com.example")              # a custom domain
    @rule("Relu", override=True)                     # a plugin replacing a built-in rule

Each op has one rule per opset range: registering an op again for an overlapping range is an
error unless ``override=True``, which makes the new rule take precedence (plugins loaded through
the ``onnxinit.rules`` entry points may override built-in rules this way).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .context import RuleContext

RuleFn = Callable[[list, RuleContext], list]


class RuleRegistrationError(ValueError):
    """An op registered twice for overlapping opsets without ``override=True``."""


def normalise_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


@dataclass(frozen=True)
class Registration:
    domain: str
    op_type: str
    since: int
    until: int | None
    fn: RuleFn
    source: str  # "built-in" or "plugin:<entry point name>"
    # the rule reads RuleContext.fusion (element-wise operands of one common ancestor)
    fusion: bool = False

    def covers(self, opset: int) -> bool:
        return self.since <= opset and (self.until is None or opset <= self.until)

    def overlaps(self, other: Registration) -> bool:
        lo, hi = max(self.since, other.since), min(
            self.until if self.until is not None else float("inf"),
            other.until if other.until is not None else float("inf"))
        return lo <= hi

    @property
    def name(self) -> str:
        return self.fn.__name__


class RuleRegistry:
    """Rules by (domain, op_type), most recent override first."""

    def __init__(self):
        self._rules: dict[tuple[str, str], list[Registration]] = {}
        self._source = "built-in"

    def register(self, registration: Registration, *, override: bool = False) -> None:
        key = (registration.domain, registration.op_type)
        existing = self._rules.setdefault(key, [])
        clash = next((r for r in existing if r.overlaps(registration)), None)
        if clash is not None and not override:
            where = f"{key[0]}." if key[0] else ""
            raise RuleRegistrationError(
                f"{where}{key[1]} already has the rule {clash.name} ({clash.source}); "
                f"{registration.name} ({registration.source}) must pass override=True")
        existing.insert(0, registration)

    def rule(self, *op_types: str, domain: str = "", since: int = 1, until: int | None = None,
             override: bool = False, fusion: bool = False):
        """Register the decorated function as the rule for ``op_types`` in ``domain``;
        ``fusion=True``: the propagator hands it the common element-wise ancestor of its two
        signal operands (:class:`~onnxinit.rules.context.CommonAncestor`)."""

        def register(fn: RuleFn) -> RuleFn:
            for op_type in op_types:
                self.register(Registration(normalise_domain(domain), op_type, since, until, fn,
                                           self._source, fusion), override=override)
            return fn

        return register

    @contextlib.contextmanager
    def registering_as(self, source: str) -> Iterator[None]:
        """Registrations made inside are recorded as coming from ``source`` (a plugin)."""
        previous, self._source = self._source, source
        try:
            yield
        finally:
            self._source = previous

    def lookup(self, domain: str, op_type: str, opset: int) -> Registration | None:
        for registration in self._rules.get((normalise_domain(domain), op_type), []):
            if registration.covers(opset):
                return registration
        return None

    def registered(self) -> list[Registration]:
        """The rule in effect for each (domain, op_type), sorted."""
        return sorted((regs[0] for regs in self._rules.values()),
                      key=lambda r: (r.domain, r.op_type))


REGISTRY = RuleRegistry()
rule = REGISTRY.rule
