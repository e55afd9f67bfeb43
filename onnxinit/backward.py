"""The backward analysis at initialization: predicted statistics of dL/dx for every float
activation x and of dL/dW for every parameter W, from a loss head back to the inputs.

Precondition: a forward :class:`~onnxinit.propagate.Propagation` (the moments of every signal
tensor; the backward rules read them: E[f'(x)^2] of an activation, the batch variance a
normalization divides by, E[x^2] of a layer's input for its weight gradient).
Postcondition: a :class:`BackwardAnalysis` with a :class:`TensorGradient` for every activation
the loss depends on and a :class:`ParameterGradient` for every parameter use.

The sweep visits the nodes in reverse topological order; each node's rule
(:mod:`onnxinit.gradrules`) turns the summed gradient statistics of its outputs into those of
its inputs. A tensor used several times (a residual fork) collects one contribution per use;
they add as uncorrelated. A node without a backward rule passes its output gradient's
statistics to its signal inputs unchanged and is listed in ``warnings`` (shown by the
``analyze`` summary; not repeated in ``Analysis.warnings``, where the forward analysis already
names an op it has no rule for).

Conventions: the loss is the mean over the batch (and any other non-class axis), as
:mod:`onnxinit.autodiff.loss` writes it, so every gradient carries the factor 1/batch. A
parameter's ``update_ratio`` is ``lr * rms(dL/dW) / rms(W)`` with ``lr = 1``: the relative step
plain SGD takes on that parameter per unit learning rate.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from .backward_measure import measure_gradients
from .errors import InvalidOptionError, PredictionError
from .gradrules import LOSSES, GradContext, Gradient, add, loss_gradient, lookup
from .graph import ModelGraph
from .propagate import Propagation, single_threaded_blas
from .rules.context import RuleError
from .strict import fall_back

log = logging.getLogger("onnxinit")

PASSED = "pass-through"


@dataclass(frozen=True)
class TensorGradient:
    name: str
    mean: float
    var: float
    measured_mean: float | None = None
    measured_var: float | None = None

    @property
    def relative_error(self) -> float | None:
        if self.measured_var is None:
            return None
        return abs(self.var - self.measured_var) / max(abs(self.measured_var), 1e-300)


@dataclass(frozen=True)
class ParameterGradient:
    name: str
    node: str
    role: str
    grad_var: float  # variance of dL/dW over its elements (and batches)
    weight_rms: float
    update_ratio: float | None  # lr * rms(dL/dW) / rms(W), lr = 1
    measured_grad_var: float | None = None
    grad_mean: float = 0.0


@dataclass(frozen=True)
class BackwardAnalysis:
    loss: str
    tensors: dict[str, TensorGradient]
    parameters: list[ParameterGradient]
    warnings: list[str] = field(default_factory=list)
    rules: dict[str, str] = field(default_factory=dict)  # tensor -> rule that produced it


def _head_output(propagation: Propagation, output: str | None) -> str:
    graph = propagation.graph
    outputs = [o for o in graph.output_names if o in propagation.moments]
    if output is not None:
        if output not in propagation.moments:
            raise InvalidOptionError(
                f"--loss-output {output!r} is not a float tensor of {graph.name}")
        return output
    if not outputs:
        raise InvalidOptionError(f"{graph.name} has no float output to put a loss on")
    return outputs[0]


def _batch(propagation: Propagation) -> int:
    graph = propagation.graph
    for name in graph.input_names:
        shape = graph.input_shapes.get(name)
        if shape:
            return int(shape[0])
    return 1


def tensor_gradients(propagation: Propagation, loss: str = "cross_entropy",
                     output: str | None = None):
    """(gradient statistics per tensor, rule name per tensor, parameter gradient statistics
    per (parameter, node, input index), warnings) from the loss on ``output`` (default: the
    first float output) back to the inputs."""
    if loss not in LOSSES:
        raise InvalidOptionError(f"loss must be one of {', '.join(LOSSES)}, not {loss!r}")
    graph = propagation.graph
    forward = propagation.moments
    head = _head_output(propagation, output)
    head_shape = graph.shape(head)
    if head_shape is None:
        raise InvalidOptionError(f"{graph.name}: output {head!r} has no static shape, so no "
                                 f"loss can be put on it; choose another with --loss-output")
    batch = _batch(propagation)
    warnings: list[str] = []
    if len(head_shape) == 0:
        warnings.append(f"output {head!r} is a scalar: taken as the loss itself (dL/d{head} = 1)")
        loss = "self"
    contributions: dict[str, list[Gradient]] = {
        head: [loss_gradient(loss, forward[head], head_shape)]}
    rules = {head: f"loss:{loss}"}
    done: dict[str, Gradient] = {}
    params: dict[tuple[str, str, int], Gradient] = {}
    for node_id in reversed(graph.order):
        if graph.is_shape_node(node_id):
            continue
        node = graph.node(node_id)
        grads = []
        for name in node.output:
            parts = contributions.pop(name, None) if name else None
            grads.append(add(parts) if parts else None)
            if parts:
                done[name] = grads[-1]
        if all(g is None for g in grads):
            continue
        ctx = GradContext(node, node_id, graph, propagation.settings, forward=forward,
                          batch=batch, gradients=done)
        registration = lookup(node.domain, node.op_type, graph.opset)
        inputs, rule_name = None, PASSED
        if registration is not None:
            try:
                inputs = registration.fn(grads, ctx)
                rule_name = registration.fn.__name__
            except RuleError as exc:
                reason = str(exc)
            except Exception as exc:  # a rule bug must not abort the analysis
                fall_back(exc)
                log.debug("backward rule %s failed on %s", registration.fn.__name__, node_id,
                          exc_info=True)
                reason = f"rule {registration.fn.__name__} failed: {type(exc).__name__}: {exc}"
        else:
            reason = "no backward rule for this op"
        if inputs is None:
            warnings.append(f"node {node_id} ({node.op_type}): no backward rule applied, the "
                            f"output's gradient statistics taken for its inputs ({reason})")
            first = next(g for g in grads if g is not None)
            inputs = [first.pooled() if graph.is_signal(name) else None for name in node.input]
        for name, g in ctx.redirect.items():
            contributions.setdefault(name, []).append(g)
            rules.setdefault(name, rule_name)
        for index, (name, g) in enumerate(zip(node.input, inputs)):
            if g is None or not name or _empty(graph, name):
                continue
            if graph.is_signal(name):
                _require_finite(g, node_id, node.op_type, name)
                contributions.setdefault(name, []).append(g)
                rules.setdefault(name, rule_name)
            elif graph.parameter_of(name) is not None:
                params[(graph.parameter_of(name), node_id, index)] = g
    for name, parts in contributions.items():  # graph inputs
        done[name] = add(parts)
    return done, rules, params, warnings


def _empty(graph, name: str) -> bool:
    """``name`` holds no element (a dimension 0: the pass-through part of a rotary embedding
    that rotates every feature, ``x[..., d:]``): it receives no gradient (its statistics, a
    mean over no element, would be NaN)."""
    shape = graph.shape(name)
    return shape is not None and any(d == 0 for d in shape)


def _require_finite(g: Gradient, node_id: str, op: str, tensor: str) -> None:
    if not (np.isfinite(g.mean).all() and np.isfinite(g.var).all()):
        raise PredictionError(f"node {node_id} ({op}): the backward rule predicted a "
                              f"non-finite gradient statistic for {tensor!r}")


def parameter_gradients(propagation: Propagation,
                        params: dict[tuple[str, str, int], Gradient]) -> list[ParameterGradient]:
    """One row per parameter use in graph order: the predicted variance of dL/dW over W's
    elements, W's rms and the update ratio ``rms(dL/dW) / rms(W)``."""
    graph = propagation.graph
    order = {node_id: i for i, node_id in enumerate(graph.order)}
    rows = []
    for name, parameter in graph.parameters.items():
        value = graph.value(name)
        rms = float(np.sqrt(np.mean(np.square(value, dtype=np.float64)))) if value is not None \
            and value.size else 0.0
        for node_id, index, role in parameter.uses:
            g = params.get((name, node_id, index))
            if g is None:
                continue
            mean, var = g.total()
            ratio = math.sqrt(var + mean**2) / rms if rms > 0 else None
            rows.append((order.get(node_id, 0), ParameterGradient(
                name, node_id, role, var, rms, ratio, grad_mean=mean)))
    rows.sort(key=lambda r: r[0])
    return [row for _, row in rows]


def predict_backward(propagation: Propagation, loss: str = "cross_entropy",
                     output: str | None = None) -> BackwardAnalysis:
    """The backward analysis of ``propagation``'s graph (see the module docstring)."""
    with single_threaded_blas():
        done, rules, params, warnings = tensor_gradients(propagation, loss, output)
    tensors = {}
    for name in propagation.graph.float_activations():
        if name in done:
            mean, var = done[name].total()
            tensors[name] = TensorGradient(name, mean, var)
    return BackwardAnalysis(loss, tensors, parameter_gradients(propagation, params), warnings,
                            {k: v for k, v in rules.items() if k in tensors})


def measured_backward(analysis: BackwardAnalysis, graph: ModelGraph, *, batches: int = 4,
                      seed: int = 0, stats: Mapping[str, tuple[float, float]] | None = None,
                      device: str | None = "auto", output: str | None = None) -> BackwardAnalysis:
    """``analysis`` with the measured gradient statistics filled in
    (:func:`onnxinit.backward_measure.measure_gradients`)."""
    tensors, params = measure_gradients(graph, list(analysis.tensors), loss=analysis.loss,
                                        output=output, batches=batches, seed=seed, stats=stats,
                                        device=device or "auto")
    measured = {name: replace(t, measured_mean=tensors[name][0], measured_var=tensors[name][1])
                if name in tensors else t for name, t in analysis.tensors.items()}
    parameters = [replace(p, measured_grad_var=params[p.name][1]) if p.name in params else p
                  for p in analysis.parameters]
    return replace(analysis, tensors=measured, parameters=parameters)
