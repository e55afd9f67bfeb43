"""``analyze``: predicted (and optionally measured) moments of every float activation."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx

from .float_rounding import reported_total
from .graph import ModelGraph, load
from .lazy import lazy_module
from .propagate import EMPIRICAL, PASS_THROUGH, Propagation, propagate
from .residual import ResidualBlock, residual_blocks
from .plan_record import read_plan_record

if TYPE_CHECKING:
    from .backward import BackwardAnalysis

# only for --backward and --measure: the autodiff, the gradient rules and onnxruntime
_backward = lazy_module("onnxinit.backward")
_feeds = lazy_module("onnxinit.feeds")
_measure = lazy_module("onnxinit.measure")

log = logging.getLogger("onnxinit")

DEFAULT_MAX_GROWTH = 100.0
DEFAULT_MIN_VAR = 1e-7

NORMALIZATION_OPS = {"BatchNormalization", "InstanceNormalization", "GroupNormalization",
                     "LayerNormalization", "RMSNormalization"}


@dataclass
class TensorReport:
    name: str
    node: str
    op: str
    shape: list[int] | None
    mean: float
    var: float
    rule: str
    growth: float  # var relative to the input variance
    flag: str | None = None  # "exploding" | "vanishing" | None
    measured_mean: float | None = None
    measured_var: float | None = None

    @property
    def relative_error(self) -> float | None:
        if self.measured_var is None:
            return None
        return abs(self.var - self.measured_var) / max(abs(self.measured_var), 1e-30)


@dataclass
class Analysis:
    model: str
    inputs: dict[str, dict]
    tensors: list[TensorReport]
    warnings: list[str]
    propagation: Propagation = field(repr=False)
    max_growth: float = DEFAULT_MAX_GROWTH
    min_var: float = DEFAULT_MIN_VAR
    residual_blocks: list[ResidualBlock] = field(default_factory=list)
    backward: BackwardAnalysis | None = None  # with backward=True (analyze --backward)

    @property
    def graph(self) -> ModelGraph:
        return self.propagation.graph

    def to_dict(self) -> dict:
        tensors = []
        for t in self.tensors:
            entry = {k: v for k, v in asdict(t).items() if v is not None or k == "shape"}
            entry.pop("growth", None)
            entry.pop("flag", None)
            entry["growth"] = t.growth
            if t.flag:
                entry["flag"] = t.flag
            if t.relative_error is not None:
                entry["relative_error"] = t.relative_error
            gradient = self.backward.tensors.get(t.name) if self.backward else None
            if gradient is not None:
                entry["grad_mean"], entry["grad_var"] = gradient.mean, gradient.var
                if gradient.measured_var is not None:
                    entry["measured_grad_mean"] = gradient.measured_mean
                    entry["measured_grad_var"] = gradient.measured_var
                    entry["grad_relative_error"] = gradient.relative_error
            tensors.append(entry)
        extra = {}
        if self.backward is not None:
            extra = {"backward": {"loss": self.backward.loss},
                     "parameters": [asdict(p) for p in self.backward.parameters]}
        return {
            "model": self.model,
            "inputs": self.inputs,
            "tensors": tensors,
            "residual_blocks": [block.to_dict() for block in self.residual_blocks],
            "warnings": self.warnings,
            **extra,
        }


def flag_for(var: float, input_var: float, max_growth: float, min_var: float) -> str | None:
    if not np.isfinite(var) or var > max_growth * input_var:
        return "exploding"
    if var < min_var * input_var:
        return "vanishing"
    return None


_OWN_PARAMETERS = re.compile(r"^(?P<layer>.+)[./](?:weight|kernel)$")


def _own_parameters(weight: str, bias: str) -> bool:
    """True when a layer's weight and bias carry the names of one module's own parameters
    (``conv1.weight``/``conv1.bias``, ``conv/kernel``/``conv/bias``): an exporter writes folded
    BatchNormalization as new constants (``onnx::Conv_12``), not under the layer's names."""
    match = _OWN_PARAMETERS.match(weight)
    return match is not None and bias in (f"{match['layer']}.bias", f"{match['layer']}/bias")


_REWRITE_RULE = "pkg.onnxscript.rewriter.rule_name"  # torch.onnx's dynamo exporter's optimizer


def _fused_by_exporter(graph: ModelGraph) -> int:
    """How many nodes the exporter's optimizer wrote by folding a BatchNormalization into them:
    torch.onnx's dynamo exporter records the onnxscript rewrite rule it applied
    (``FuseBatchNormIntoConv``, ``...IntoGemm``) in each node's metadata, and it folds with
    ``training=TRAINING`` too, keeping the layer's own weight names (so the zero-bias reading
    below cannot see it: the zero bias is dropped)."""
    return sum(
        any(p.key == _REWRITE_RULE and "FuseBatchNormInto" in p.value
            for p in graph.node(n).metadata_props)
        for n in graph.order
    )


def eval_export_warning(graph: ModelGraph) -> str | None:
    """An eval-mode export of a normalised convnet has its BatchNormalization folded into the
    convolutions: at initialization that leaves Convs whose bias is all zeros (the folded shift
    of fresh statistics) and no normalization layers. Zero biases are no evidence of that when
    onnxinit wrote them (the model's ``onnxinit.plan`` record lists the tensors a method
    replaced: autoinit, the classic schemes and idinit zero biases) or when the layer's weight
    and bias keep its parameters' own names (nothing was folded into them; e.g. a network
    whose init zeroes its biases)."""
    fused = _fused_by_exporter(graph)
    if fused:
        return (
            f"BatchNormalization was folded into {fused} node(s) by the exporter (their metadata "
            "names the onnxscript rewrite rule FuseBatchNormInto...: torch.onnx.export with "
            "dynamo=True does this in training mode too), which at initialization is a different "
            "function from the network being trained; export with "
            "training=torch.onnx.TrainingMode.TRAINING and optimize=False (the dynamo exporter "
            "then keeps BatchNormalization) or dynamo=False"
        )
    ops = {graph.node(n).op_type for n in graph.order}
    if ops & NORMALIZATION_OPS:
        return None
    convs = [graph.node(n) for n in graph.parametric_nodes if graph.node(n).op_type == "Conv"]
    if len(convs) < 3:
        return None
    written = set((read_plan_record(graph.source) or {}).get("replaced", []))

    def folded_looking(conv) -> bool:
        bias = conv.input[2] if len(conv.input) > 2 else ""
        value = graph.value(bias) if bias else None
        if value is None or np.any(value) or graph.parameter_of(bias) in written:
            return False
        return not _own_parameters(conv.input[1], bias)

    if all(folded_looking(c) for c in convs):
        return (
            "every Conv has an all-zero bias and the graph has no normalization layers: this "
            "looks like an eval-mode export with BatchNormalization folded into the Convs, which "
            "is a different function from the network being trained; export in training mode "
            "(torch.onnx.export(..., training=torch.onnx.TrainingMode.TRAINING))"
        )
    return None


def _inputs_summary(result: Propagation) -> dict[str, dict]:
    graph = result.graph
    out = {}
    for name in graph.input_names:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(graph.dtypes.get(name, 1))
        entry = {"shape": list(graph.input_shapes[name]), "dtype": str(np.dtype(dtype))}
        if name in result.input_stats:
            entry["mean"], entry["var"] = result.input_stats[name]
        out[name] = entry
    return out



def fallback_warnings(fallbacks) -> list[str]:
    """One warning per node the empirical fallback measured; nodes of one op type measured for
    one reason (EfficientNet's stochastic-depth masks: 9 RandomUniformLike, 9 Cast) share one
    line naming the first and the last, each node logged at -v."""
    groups: dict[tuple[str, str], list[str]] = {}
    for fb in fallbacks:
        if fb.kind == EMPIRICAL:
            groups.setdefault((fb.op, fb.reason), []).append(fb.node)
    lines = []
    for (op, reason), nodes in groups.items():
        for node in nodes:
            log.info("node %s (%s): analysed by the empirical fallback (%s)", node, op, reason)
        if len(nodes) == 1:
            lines.append(f"node {nodes[0]} ({op}): analysed by the empirical fallback ({reason})")
        else:
            lines.append(f"{len(nodes)} {op} nodes, {nodes[0]} to {nodes[-1]}: analysed by the "
                         f"empirical fallback ({reason}; -v lists each)")
    return lines

def analyze(
    model: str | os.PathLike | onnx.ModelProto | ModelGraph,
    *,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    batch_size: int = 32,
    stats: Mapping[str, tuple[float, float]] | None = None,
    measure: bool = False,
    seed: int = 0,
    device: str = "auto",
    max_growth: float = DEFAULT_MAX_GROWTH,
    min_var: float = DEFAULT_MIN_VAR,
    backward: bool = False,
    loss: str = "cross_entropy",
    loss_output: str | None = None,
    gradient_batches: int = 4,
) -> Analysis:
    """Predict the mean and variance of every float activation of ``model``.

    With ``measure=True`` the model also runs in onnxruntime on seeded Gaussian inputs (batch
    ``batch_size``) with training semantics, and each tensor reports the measured moments.

    With ``backward=True`` the analysis also predicts the gradient statistics of every
    activation and parameter under ``loss`` ("cross_entropy", "mse", "unit"; see
    :mod:`onnxinit.backward`), put on ``loss_output`` (default: the first float output of the
    graph); with ``measure=True`` too, they are measured with the autodiff over
    ``gradient_batches`` seeded batches.
    """
    graph = load(model, input_shapes=input_shapes, batch_size=batch_size)
    result = propagate(graph, stats, seed=seed)
    measured, overflowed = {}, []
    if measure:
        start = time.perf_counter()
        _measure.require_memory(graph)
        feeds = _feeds.synthetic_feeds(graph, seed=seed, stats=stats)
        measured = _measure.measure(graph, feeds, device=device, overflowed=overflowed)
        log.info("measured %d tensors in onnxruntime on a seeded batch in %.2f s",
                 len(measured), time.perf_counter() - start)
    input_var = result.input_var
    tensors = []
    user = graph.user_tensors()  # a pass's own tensors are not the user's: left out
    for name in graph.float_activations():
        if name not in result.moments or name not in user:
            continue
        # as the tensor's float type holds it (a gate within an ulp of 0.5 is a constant)
        mean, var = reported_total(result.moments[name], graph.dtypes.get(name))
        node_id, op = user[name]
        shape = graph.shape(name)
        report = TensorReport(
            name=name,
            node=node_id,
            op=op,
            shape=list(shape) if shape is not None else None,
            mean=mean,
            var=var,
            rule=result.rules.get(name, ""),
            growth=var / input_var,
            flag=flag_for(var, input_var, max_growth, min_var),
        )
        if name in measured:
            report.measured_mean, report.measured_var = measured[name]
        tensors.append(report)
    warnings = list(result.warnings) + fallback_warnings(result.fallbacks)
    if overflowed:
        warnings.append(
            f"{len(overflowed)} tensor(s) overflowed to inf or NaN in onnxruntime (first "
            f"{overflowed[0]!r}): left out of the measured comparison")
    if (warning := eval_export_warning(graph)) is not None:
        warnings.append(warning)
    gradients = None
    if backward:
        # its warnings: gradients.warnings
        gradients = _backward.predict_backward(result, loss, loss_output)
        if measure:
            gradients = _backward.measured_backward(gradients, graph, batches=gradient_batches,
                                                    seed=seed, stats=stats, device=device,
                                                    output=loss_output)
    return Analysis(
        model=graph.name,
        inputs=_inputs_summary(result),
        tensors=tensors,
        warnings=list(dict.fromkeys(warnings)),
        propagation=result,
        max_growth=max_growth,
        min_var=min_var,
        residual_blocks=residual_blocks(graph),
        backward=gradients,
    )


def predict_gradients(model: str | os.PathLike | onnx.ModelProto | ModelGraph, *,
                      loss: str = "cross_entropy", **options) -> BackwardAnalysis:
    """The backward analysis of ``model`` alone: :func:`analyze` with ``backward=True`` (the
    same options; ``measure=True`` fills in the measured gradients)."""
    return analyze(model, backward=True, loss=loss, **options).backward


__all__ = ["EMPIRICAL", "PASS_THROUGH", "Analysis", "TensorReport", "analyze",
           "predict_gradients"]
