r"""What a method returns: a :class:`Plan` of per-initializer :class:`Change`\ s.

A method never edits a model; it says, per initializer, either a multiplier or a replacement
array, with the rule and target that chose it. :mod:`onnxinit.writeback` applies a Plan to a
copy of the model and writes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import InvalidOptionError


@dataclass
class Change:
    """One initializer's change: a multiplier ``scale`` or a replacement ``array`` (exactly one),
    with the rule and target that chose it."""

    scale: float | None = None
    array: np.ndarray | None = None
    rule: str = ""
    target: str = ""
    note: str = ""

    def __post_init__(self):
        if (self.scale is None) == (self.array is None):
            raise InvalidOptionError("a Change needs exactly one of scale and array")
        if self.scale is not None:
            self.scale = float(self.scale)
            if not np.isfinite(self.scale):
                raise InvalidOptionError(f"a Change's scale must be finite, not {self.scale}")

    def then(self, other: Change) -> Change:
        """``self`` followed by ``other``: scales multiply, an array then a scale is the scaled
        array (in float64, rounded once when written), anything then an array is that array."""
        rule = " then ".join(r for r in (self.rule, other.rule) if r)
        note = "; ".join(n for n in (self.note, other.note) if n)
        target = other.target or self.target
        if other.array is not None:
            return Change(array=other.array, rule=rule, target=target, note=note)
        if self.array is not None:
            scaled = np.asarray(self.array, dtype=np.float64) * other.scale
            return Change(array=scaled, rule=rule, target=target, note=note)
        return Change(scale=self.scale * other.scale, rule=rule, target=target, note=note)


@dataclass
class Plan:
    """What a method wants done: ``changes`` per initializer name, ``report`` its details.

    ``method`` is the method name; a composed plan's is the comma list of its steps
    (``"idinit,autoinit"``) and its report is ``{"steps": [{"method", "report"}, ...]}``.
    """

    method: str
    changes: dict[str, Change]
    report: dict = field(default_factory=dict)

    def _steps(self) -> list[dict]:
        if "," in self.method and "steps" in self.report:
            return list(self.report["steps"])
        return [{"method": self.method, "report": self.report}]

    def then(self, other: Plan) -> Plan:
        """The plan that applies ``self`` and then ``other`` (``--method idinit,autoinit``)."""
        changes = dict(self.changes)
        for name, change in other.changes.items():
            changes[name] = changes[name].then(change) if name in changes else change
        return Plan(
            method=f"{self.method},{other.method}",
            changes=changes,
            report={"steps": self._steps() + other._steps()},
        )

    def scales(self) -> dict[str, float]:
        """Initializer -> scale, for the changes that are scales."""
        return {n: c.scale for n, c in self.changes.items() if c.scale is not None}

    def replaced(self) -> list[str]:
        """Initializers the plan replaces with a new array."""
        return [n for n, c in self.changes.items() if c.array is not None]
