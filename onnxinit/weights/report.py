"""What a mapping found: :class:`MappingReport`, and :class:`MappingError` when it is refused."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import UnsupportedModelError


class MappingError(UnsupportedModelError):
    """The framework's parameters do not match the ONNX weights; ``report`` says how."""

    def __init__(self, message: str, report: MappingReport):
        super().__init__(message)
        self.report = report


@dataclass
class Fold:
    """An ONNX tensor that combines parameters with a BatchNormalization's state (an inference
    export folds them; ``k = gamma / sqrt(var + eps)``).

    ``kind``: ``weight`` (``W * k`` per output channel, ``param`` the layer's kernel, in
    ``layout``), ``bias`` (``(b - mean) * k + beta``, ``param`` the layer's bias or None when
    it has none), ``scale`` (``k``, a BatchNormalization written as a Mul by a constant) or
    ``shift`` (``beta - mean * k``, its Add). ``batchnorm``: the (gamma, beta, mean, variance)
    parameters; ``paired``: how the BatchNormalization was identified (``graph``: the
    framework's own layer graph; ``unique``: the only one whose state fits;
    ``interchangeable``: one of several with equal state, any of which gives the same values
    as long as only the layer's own parameters change)."""

    kind: str
    param: str | None
    batchnorm: tuple[str, str, str, str]
    eps: float
    layout: str = "same"
    paired: str = "unique"


@dataclass
class MappingReport:
    """How ONNX initializers map onto a framework's parameters.

    ``mapped``: ONNX name -> parameter name (several ONNX tensors may map to one parameter:
    tied weights); ``unmapped``: ONNX float initializers with no parameter; ``missing``:
    parameters with no ONNX initializer (buffers are only counted when they were mapped);
    ``constants``: one-element tensors that match no parameter (an exporter's epsilon or 1.0,
    not weights; a rescale that changed one is still refused like an unmapped tensor);
    ``absent``: parameters the export left out (a zero bias tf2onnx drops, of a layer whose other
    parameters were found) or ``merged`` into a tensor that stands for several equal parameters
    (parameter -> that tensor), not counted as missing;
    ``folded``: ONNX tensors recognised as a weight, bias or constant with BatchNormalization
    folded in (inference export), ``folded_into`` the parameters each one combines and
    ``unfold`` how (a :class:`Fold`); ``transposed``: mapped tensors that are their parameter
    transposed or permuted, ``layout`` the layout of each tensor not mapped as it is
    (``transposed``, ``channels-last kernel``, ``channels-last depthwise kernel``: see
    :mod:`onnxinit.weights.layouts`), ``reshaped`` those that differ from their parameter
    only by size-1 dimensions (a bias written as ``[1, C]``); ``how``: the rule that mapped each
    tensor; ``mismatched``: same-name tensors whose shapes differ; ``ambiguous``: tensors equal
    to several parameters that could not be told apart; ``conflicts``: parameters that would
    receive different values from different tensors; ``aliases``: mapped names that are not
    initializers but read one through ``Identity`` (alias -> initializer; an initializer counts
    as mapped when it or one of its aliases is)."""

    mapped: dict[str, str] = field(default_factory=dict)
    unmapped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    constants: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    merged: dict[str, str] = field(default_factory=dict)
    folded: list[str] = field(default_factory=list)
    folded_into: dict[str, list[str]] = field(default_factory=dict)
    unfold: dict[str, Fold] = field(default_factory=dict)
    transposed: list[str] = field(default_factory=list)
    layout: dict[str, str] = field(default_factory=dict)
    reshaped: list[str] = field(default_factory=list)
    how: dict[str, str] = field(default_factory=dict)
    mismatched: dict[str, str] = field(default_factory=dict)
    ambiguous: dict[str, list[str]] = field(default_factory=dict)
    conflicts: dict[str, list[str]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    # a recurrent op's W, R or B -> the per-direction parameters its views equal (nothing to
    # load: the methods leave them as initialised; weights/recurrent.py)
    recurrent: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: counts, then the first few names of each problem."""
        parts = [f"{len(self.mapped)} mapped", f"{len(self.unmapped)} unmapped",
                 f"{len(self.missing)} missing"]
        if self.absent:
            parts.append(f"{len(self.absent)} absent from the export")
        if self.folded:
            parts.append(f"{len(self.folded)} with BatchNormalization folded in")
        if self.recurrent:
            parts.append(f"{len(self.recurrent)} recurrent (unchanged, "
                         f"{sum(map(len, self.recurrent.values()))} parameters)")
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
        return asdict(self)

