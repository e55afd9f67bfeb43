"""What a report shows, as plain data: for the model (and its rescaled copy) the document
``analyze --json`` prints and the entry ``check --format json`` prints, the main signal path,
the residual blocks, the stages of a long table and the per-layer weight scales.

The numbers come from :meth:`Analysis.to_dict` and :func:`onnxinit.check.find` as they are; the
report renders them and computes nothing of its own but the stage aggregates (the minimum and
maximum over a stage's tensors) and the weight scales (:mod:`.scales`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..analysis import Analysis
from ..check import find, paths_of
from ..check_formats import ModelResult
from .scales import LayerScale, layer_scales
from .stages import MAX_ROWS, Stage, stages

MODEL, RESCALED = "model", "rescaled"  # the two documents a number of the report comes from


@dataclass(frozen=True)
class ModelView:
    """One analysed model: ``analysis`` is what ``analyze --json`` prints for it, ``check`` its
    entry of ``check --format json`` (findings, summary with the thresholds, warnings)."""

    key: str  # MODEL or RESCALED
    path: str
    analysis: dict
    check: dict
    main: frozenset[str]  # tensors on the main signal path
    input_var: float  # what growth divides by

    @property
    def tensors(self) -> list[dict]:
        return self.analysis["tensors"]

    @property
    def findings(self) -> list[dict]:
        return self.check["findings"]

    def findings_at(self) -> dict[str, list[str]]:
        """Tensor -> the rule ids of the findings raised at it."""
        out: dict[str, list[str]] = {}
        for finding in self.findings:
            out.setdefault(finding["tensor"], []).append(finding["rule_id"])
        return out

    @property
    def backward(self) -> bool:
        """True when the analysis carries gradient statistics (``analyze --backward``)."""
        return "backward" in self.analysis

    @property
    def measured(self) -> bool:
        return any("measured_var" in t for t in self.tensors)


@dataclass(frozen=True)
class ReportContent:
    model: ModelView
    rescaled: ModelView | None
    # residual blocks: (k, index of the block's input, index of its Add's output), k its place
    # in the analysis's residual_blocks
    blocks: list[tuple[int, int, int]]
    stages: list[Stage]  # the rows of the table by stage; empty when a row per tensor is short
    layers: list[LayerScale] = field(default_factory=list)  # with a rescaled model

    @property
    def views(self) -> list[ModelView]:
        return [self.model] + ([self.rescaled] if self.rescaled is not None else [])

    def index(self) -> dict[str, int]:
        """Tensor name -> its index (row) in the tables and on the plot's x axis."""
        return {t["name"]: i for i, t in enumerate(self.model.tensors)}


def view(analysis: Analysis, key: str) -> ModelView:
    """The documents of one analysed model; the findings are ``check``'s own."""
    paths = paths_of(analysis)
    findings = find(analysis, paths=paths)
    return ModelView(key, analysis.model, analysis.to_dict(),
                     ModelResult.of_analysis(analysis.model, findings, analysis).to_json(),
                     frozenset(paths.main), analysis.propagation.input_var)


def build(analysis: Analysis, rescaled: Analysis | None = None, *,
          max_rows: int = MAX_ROWS) -> ReportContent:
    """The content of the report on ``analysis`` (and on ``rescaled``, the analysis of a
    rescaled copy of the same model, analysed with the same options)."""
    layers = [] if rescaled is None else layer_scales(analysis.graph, rescaled.graph)
    model = view(analysis, MODEL)
    after = None if rescaled is None else view(rescaled, RESCALED)
    names = [t["name"] for t in model.tensors]
    index = {name: i for i, name in enumerate(names)}
    blocks = [(k, index[b.input], index[b.output])
              for k, b in enumerate(analysis.residual_blocks)
              if b.input in index and b.output in index]
    if len(names) <= max_rows:
        rows = []
    else:
        ends = [out for _, _, out in blocks] or [index[layer.output] for layer in
                                             analysis.graph.layers if layer.output in index]
        rows = stages([t["node"] for t in model.tensors], ends, max_rows)
    return ReportContent(model, after, blocks, rows, layers)
