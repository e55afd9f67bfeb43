"""``rescale``: run one or more methods, compose their Plans, write the new model atomically."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from .errors import InvalidOptionError, UnsupportedModelError
from .graph import ModelGraph, load
from .methods import METHODS, make_options, parse_methods, refuse_unread
from .plan import Plan
from .propagate import propagate
from .writeback import (
    apply_plan,
    default_output,
    plan_record,
    read_plan_record,
    save_model,
    set_plan_record,
)

log = logging.getLogger("onnxinit")

QUANTIZED_OPS = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
                 "DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear", "QGemm"}


@dataclass
class RescaleResult:
    model: onnx.ModelProto
    plan: Plan
    output: Path | None
    outputs_var_before: dict[str, float]
    outputs_var_after: dict[str, float]
    method_reports: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        changes = {}
        for name, change in self.plan.changes.items():
            entry = {"rule": change.rule, "target": change.target}
            if change.scale is not None:
                entry["scale"] = change.scale
            else:
                entry["replaced"] = True
            if change.note:
                entry["note"] = change.note
            changes[name] = entry
        return {
            "output": str(self.output) if self.output else None,
            "methods": self.plan.method.split(","),
            "changes": changes,
            "outputs_var_before": self.outputs_var_before,
            "outputs_var_after": self.outputs_var_after,
            "method_reports": self.method_reports,
        }


def _refuse_unsupported(graph: ModelGraph) -> None:
    quantized = sorted({graph.node(n).op_type for n in graph.order} & QUANTIZED_OPS)
    if quantized:
        raise UnsupportedModelError(
            f"{graph.name}: quantized model ({', '.join(quantized)}): its integer weights "
            "carry quantization scales that rescaling would invalidate; rescale the float "
            "model before quantizing it"
        )
    if not graph.parameters:
        raise UnsupportedModelError(f"{graph.name}: the model has no float parameters to rescale")


def output_path(model_path: str | os.PathLike | None, method: str,
                output: str | os.PathLike | None = None, in_place: bool = False) -> Path | None:
    """Where :func:`rescale` writes: ``output``, else the input itself with ``in_place``, else
    ``<stem>.<methods>.onnx`` beside the input (None for a model given without a path)."""
    if output is not None:
        return Path(output)
    if model_path is None:
        return None
    if in_place:
        return Path(model_path)
    return default_output(model_path, "-".join(parse_methods(method)))


def _output_vars(graph: ModelGraph, seed: int) -> dict[str, float]:
    result = propagate(graph, seed=seed)
    return {n: result.moments[n].total()[1] for n in graph.output_names if n in result.moments}


def rescale(
    model: str | os.PathLike | onnx.ModelProto | ModelGraph,
    method: str = "autoinit",
    *,
    output: str | os.PathLike | None = None,
    in_place: bool = False,
    write: bool = True,
    input_shapes=None,
    batch_size: int = 32,
    **options,
) -> RescaleResult:
    """Rescale ``model`` with ``method`` (a name or comma list applied in order) and write the
    result (``<stem>.<method>.onnx`` beside the input unless ``output``; never the input itself
    unless ``in_place``). Method options (``target_var``, ``keep_bias``, ``seed``...) pass by
    keyword."""
    names = parse_methods(method)
    refuse_unread(names, {k: v for k, v in options.items() if k != "seed"})
    graph = load(model, input_shapes=input_shapes, batch_size=batch_size)
    _refuse_unsupported(graph)
    out_path = None
    if write:
        if in_place and output is not None and Path(output) != graph.path:
            raise InvalidOptionError(
                "in-place rescaling writes the input model itself; give no output path")
        out_path = output_path(graph.path, method, output, in_place)
        if out_path is None:
            raise InvalidOptionError("rescaling a ModelProto needs an output path (output=...)")
    seed = options.get("seed", 0)
    before = _output_vars(graph, seed)
    plan, current, reports = None, graph, {}
    for i, name in enumerate(names):
        log.info("%s: planning", name)
        start = time.perf_counter()
        step = METHODS[name][0](current, make_options(name, options))
        scaled = sum(c.scale is not None for c in step.changes.values())
        log.info("%s: %d tensors scaled, %d replaced in %.2f s", name, scaled,
                 len(step.changes) - scaled, time.perf_counter() - start)
        reports[name] = step.report
        plan = step if plan is None else plan.then(step)
        if i + 1 < len(names):
            current = load(apply_plan(graph.source, plan), input_shapes=graph.input_shapes,
                           batch_size=batch_size)
    new_model = apply_plan(graph.source, plan)
    set_plan_record(new_model, plan_record(plan, graph.path, read_plan_record(graph.source)))
    after_graph = load(new_model, input_shapes=graph.input_shapes, batch_size=batch_size)
    result = RescaleResult(
        model=new_model, plan=plan, output=out_path,
        outputs_var_before=before, outputs_var_after=_output_vars(after_graph, seed),
        method_reports=reports,
    )
    if write:
        save_model(new_model, out_path, source_path=graph.path, external=graph.external,
                   in_place=in_place)
    return result
