r"""What a method returns: a :class:`Plan` of per-initializer :class:`Change`\ s.

A method never edits a model; it says, per initializer, either a multiplier or a replacement
array, with the rule and target that chose it. :mod:`onnxinit.writeback` applies a Plan to a
copy of the model and writes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import InvalidOptionError, UnsupportedModelError


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


def changed_values(name: str, old: np.ndarray, change: Change,
                   flat: slice | None = None) -> np.ndarray:
    """The new values of initializer ``name`` (``old``: its values, any shape, its dtype):
    ``old * scale`` or the replacement, computed in float64 and rounded once to ``old``'s
    dtype. With ``flat``, only that range of the flattened tensor (``old`` is then that range
    of the old values), so a large tensor can be rewritten piece by piece with the same result.
    Raises InvalidOptionError for a replacement of another shape or non-finite values,
    UnsupportedModelError when a value overflows the dtype."""
    dtype = old.dtype
    if change.scale is not None:
        values = np.array(old, dtype=np.float64)
        values *= change.scale
    else:
        values = np.asarray(change.array)
        expected = tuple(old.shape) if flat is None else None
        if expected is not None and tuple(values.shape) != expected:
            raise InvalidOptionError(
                f"replacement for initializer {name!r} has shape {tuple(values.shape)}, "
                f"the tensor has {expected}"
            )
        values = values.reshape(-1)[flat] if flat is not None else values
        values = values.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        out = values.astype(dtype)
    if not np.isfinite(out).all():  # a non-finite value, or one the cast overflowed
        if not np.isfinite(values).all():
            raise InvalidOptionError(f"new values for initializer {name!r} are not all finite")
        raise UnsupportedModelError(
            f"new values for initializer {name!r} overflow its dtype {dtype.name}"
        )
    return out


@dataclass
class Plan:
    """What a method wants done: ``changes`` per initializer name, ``report`` its details.

    ``method`` is the method name; a composed plan's is the comma list of its steps
    (``"idinit,autoinit"``) and its report is ``{"steps": [{"method", "report"}, ...]}``.
    """

    method: str
    changes: dict[str, Change]
    report: dict = field(default_factory=dict)
    # the Propagation of the model with this plan applied, when the method computed it on the
    # way (autoinit's single pass); None when the caller must propagate the result itself
    prediction: object | None = field(default=None, repr=False, compare=False)

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
