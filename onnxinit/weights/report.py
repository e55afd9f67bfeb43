"""What a mapping found: :class:`MappingReport`, and :class:`MappingError` when it is refused."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UnsupportedModelError


class MappingError(UnsupportedModelError):
    """The framework's parameters do not match the ONNX weights; ``report`` says how."""

    def __init__(self, message: str, report: MappingReport):
        super().__init__(message)
        self.report = report



@dataclass
class MappingReport:
    """How ONNX initializers map onto a framework's parameters.

    ``mapped``: ONNX name -> parameter name (several ONNX tensors may map to one parameter:
    tied weights); ``unmapped``: ONNX float initializers with no parameter; ``missing``:
    parameters with no ONNX initializer (buffers are only counted when they were mapped);
    ``folded``: ONNX tensors recognised as a Conv weight or bias with BatchNormalization folded
    in (eval-mode export), ``folded_into`` the parameters each one combines; ``transposed``:
    mapped tensors that are their parameter transposed, ``reshaped`` those that differ from it
    only by size-1 dimensions (a bias written as ``[1, C]``); ``how``: the rule that mapped each
    tensor; ``mismatched``: same-name tensors whose shapes differ; ``ambiguous``: tensors equal
    to several parameters that could not be told apart; ``conflicts``: parameters that would
    receive different values from different tensors; ``aliases``: mapped names that are not
    initializers but read one through ``Identity`` (alias -> initializer; an initializer counts
    as mapped when it or one of its aliases is)."""

    mapped: dict[str, str] = field(default_factory=dict)
    unmapped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    folded: list[str] = field(default_factory=list)
    folded_into: dict[str, list[str]] = field(default_factory=dict)
    transposed: list[str] = field(default_factory=list)
    reshaped: list[str] = field(default_factory=list)
    how: dict[str, str] = field(default_factory=dict)
    mismatched: dict[str, str] = field(default_factory=dict)
    ambiguous: dict[str, list[str]] = field(default_factory=dict)
    conflicts: dict[str, list[str]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: counts, then the first few names of each problem."""
        parts = [f"{len(self.mapped)} mapped", f"{len(self.unmapped)} unmapped",
                 f"{len(self.missing)} missing"]
        if self.folded:
            parts.append(f"{len(self.folded)} folded (eval-mode export: BatchNormalization "
                         "folded into Conv; re-export in training mode)")
        for label, items in (("mismatched", self.mismatched), ("conflicting", self.conflicts),
                             ("unmapped", self.unmapped), ("missing", self.missing),
                             ("ambiguous", self.ambiguous)):
            if items:
                names = list(items)[:3]
                more = f" and {len(items) - 3} more" if len(items) > 3 else ""
                detail = ", ".join(
                    f"{n} ({items[n]})" if isinstance(items, dict) and label == "mismatched"
                    else n for n in names)
                parts.append(f"{label}: {detail}{more}")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

