"""``rescale``: run one or more methods, compose their Plans, write the new model atomically."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import onnx

from .errors import InvalidOptionError, UnsupportedModelError
from .graph import ModelGraph, load
from .methods import METHODS, make_options, parse_methods, refuse_unread
from .output_paths import default_output
from .plan import Plan
from .plan_record import plan_record, read_plan_record, set_plan_record
from .propagate import Propagation, propagate, single_threaded_blas
from .writeback import apply_plan, write_model

log = logging.getLogger("onnxinit")

QUANTIZED_OPS = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
                 "DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear", "QGemm"}
# ops whose weights no method rescales: recurrent layers, and the bodies of control flow that
# exporters write recurrent layers as (tf2onnx's Keras GRU, jax2onnx's LSTM)
RECURRENT_HOLDERS = {"LSTM", "GRU", "RNN", "Loop", "Scan"}


@dataclass
class RescaleResult:
    """What :func:`rescale` did: the plan, where it was written, the predicted output variances
    after (a prediction of the rescaled model itself) and before, each method's report.
    ``outputs_var_before`` takes one more propagation, of the model as given, and is made when
    first asked for (the summary of ``onnxinit rescale`` does not ask unless ``--report`` or
    ``--jsonl`` records it); so is ``model``, the rescaled model in memory."""

    plan: Plan
    output: Path | None
    outputs_var_after: dict[str, float]
    method_reports: dict[str, dict] = field(default_factory=dict)
    source: onnx.ModelProto | None = field(default=None, repr=False)
    record: dict | None = field(default=None, repr=False)
    predict_before: Callable[[], dict[str, float]] | None = field(default=None, repr=False)
    left_as_initialised: dict[str, str] = field(default_factory=dict)

    @cached_property
    def outputs_var_before(self) -> dict[str, float]:
        """The predicted output variances of the model as given."""
        return {} if self.predict_before is None else self.predict_before()

    @property
    def before_known(self) -> bool:
        """Whether ``outputs_var_before`` has been computed (it costs a propagation)."""
        return "outputs_var_before" in self.__dict__

    @cached_property
    def model(self) -> onnx.ModelProto:
        """The rescaled model (changed tensors inline; external ones memory-mapped)."""
        model = apply_plan(self.source, self.plan)
        if self.record is not None:
            set_plan_record(model, self.record)
        return model

    def to_dict(self, before: bool = True) -> dict:
        """The JSON report (``--report``); ``before=False`` leaves out ``outputs_var_before``
        unless it is already known, saving its propagation."""
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
        report = {
            "output": str(self.output) if self.output else None,
            "methods": self.plan.method.split(","),
            "changes": changes,
        }
        if before or self.before_known:
            report["outputs_var_before"] = self.outputs_var_before
        report["outputs_var_after"] = self.outputs_var_after
        report["left_as_initialised"] = self.left_as_initialised
        report["method_reports"] = self.method_reports
        return report


def _refuse_unsupported(graph: ModelGraph) -> None:
    quantized = sorted({graph.node(n).op_type for n in graph.order} & QUANTIZED_OPS)
    if quantized:
        raise UnsupportedModelError(
            f"{graph.name}: quantized model ({', '.join(quantized)}): its integer weights "
            "carry quantization scales that rescaling would invalidate; rescale the float "
            "model before quantizing it"
        )
    recurrent = sorted({graph.node(n).op_type for n in graph.order} & RECURRENT_HOLDERS)
    if recurrent and not graph.parametric_nodes:
        raise UnsupportedModelError(
            f"{graph.name}: the model's weights are those of recurrent layers "
            f"({', '.join(recurrent)}), which the methods leave as initialised (they rescale "
            "Conv, ConvTranspose, Gemm and MatMul weights): nothing to rescale")
    if not graph.parameters and not graph.input_names:
        raise UnsupportedModelError(
            f"{graph.name}: the model has no inputs, so its weights are constants that no "
            "signal passes through: nothing to rescale")
    if not graph.parameters:
        raise UnsupportedModelError(f"{graph.name}: the model has no float parameters to rescale")


def recurrent_weights_left(graph: ModelGraph, plan: Plan) -> dict[str, str]:
    """Weights (float initializers of two or more dimensions) read only by recurrent ops or
    control-flow bodies that ``plan`` leaves unchanged, each with the op types reading it."""
    left = {}
    for name, parameter in graph.parameters.items():
        ops = {graph.node(node).op_type for node, _, _ in parameter.uses}
        if (len(parameter.shape) >= 2 and ops and ops <= RECURRENT_HOLDERS
                and name not in plan.changes):
            left[name] = ", ".join(sorted(ops))
    return left


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


def _output_vars(result: Propagation) -> dict[str, float]:
    graph = result.graph
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
    keyword.

    The model is loaded once (large external data memory-mapped, never copied whole); each
    method plans on a view of it holding the values chosen so far
    (:meth:`ModelGraph.with_changes`); the "after" variances are the last
    method's own prediction of the rescaled model when it made one (autoinit's single pass),
    else one more propagation of the final view; the "before" variances are a propagation of
    the model as given, made only when first read (:attr:`RescaleResult.outputs_var_before`);
    the file is written tensor by tensor (:func:`~onnxinit.writeback.write_model`)."""
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
    plan, current, reports = None, graph, {}
    with single_threaded_blas():
        for name in names:
            log.info("%s: planning", name)
            start = time.perf_counter()
            step = METHODS[name][0](current, make_options(name, options))
            scaled = sum(c.scale is not None for c in step.changes.values())
            log.info("%s: %d tensors scaled, %d replaced in %.2f s", name, scaled,
                     len(step.changes) - scaled, time.perf_counter() - start)
            reports[name] = step.report
            plan = step if plan is None else plan.then(step)
            current = graph.with_changes(plan.changes)
    if step.prediction is not None:
        prediction = step.prediction
    else:
        log.info("propagating the rescaled model")
        prediction = propagate(current, seed=seed)
    record = plan_record(plan, graph.path, read_plan_record(graph.source))
    result = RescaleResult(
        plan=plan, output=out_path, outputs_var_after=_output_vars(prediction),
        method_reports=reports, source=graph.source, record=record,
        predict_before=lambda: _output_vars(propagate(graph, seed=seed)),
        left_as_initialised=recurrent_weights_left(graph, plan),
    )
    if write and in_place:  # read the weights as given before they are overwritten
        result.outputs_var_before  # noqa: B018
    if write:
        write_model(graph.source, out_path, plan, source_path=graph.path,
                    external=graph.external, in_place=in_place, record=record)
    return result
