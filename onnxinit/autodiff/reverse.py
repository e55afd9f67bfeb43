"""Reverse-mode differentiation of a lowered ONNX graph into a gradient graph of standard ops.

The forward graph is kept as is; each parameter also becomes a graph input (its initializer
stays as the default value), so that scaled values can be fed without rebuilding. A reverse
sweep over the topologically ordered nodes calls each node's backward rule with the summed
gradients of its outputs (a tensor used several times, such as a tied weight or a residual
fork, collects one contribution per use). Only tensors that depend on a requested parameter
and reach the loss are differentiated: integer tensors and shape subgraphs are skipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from ..errors import InvalidOptionError, MissingRuleError, UnsupportedModelError
from ..parameters import float_parameters
from ..passes import GraphEmitter, fold_constants, types_and_shapes
from .backward import RULES
from .backward.linear import weight_gradient_backward
from .backward.windows import WeightGradientGeometry
from .context import BackwardContext, node_label
from .fused import batch_norm_backward, match_batch_norm
from .loss import CrossEntropy, loss_head
from .lower import lower
from .precision import to_float64
from .static import StaticInfo

MAX_IR_VERSION = 10  # onnxruntime reads at most IR 13; onnx writes newer by default
# Ops whose float outputs are piecewise constant or carry no dependence on their float inputs'
# values (only shapes): their derivative is zero wherever it exists.
ZERO_DERIVATIVE_OPS = frozenset({
    "Shape", "Size", "Sign", "Floor", "Ceil", "Round", "EyeLike", "RandomNormalLike",
    "RandomUniformLike", "ConstantOfShape", "ArgMax", "ArgMin",
})
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class GradientGraph:
    """A gradient model and what its inputs and outputs are."""

    model: onnx.ModelProto
    inputs: tuple[str, ...]  # the model's own runtime inputs
    target: str | None  # the loss head's labels/targets input, if any
    loss: str  # output 0
    wrt: tuple[str, ...]  # parameter names; output i + 1 is the gradient of wrt[i]
    parameters: tuple[str, ...]  # every parameter that is also a graph input
    elem_type: int  # element type of the float computation


def _attach_loss(model, head, label_shape, taken):
    emitter = GraphEmitter(taken, "loss/")
    outputs = [o.name for o in model.graph.output]
    output = head.output or outputs[0]
    if output not in outputs:
        inferred_names = {n for node in model.graph.node for n in node.output}
        if output not in inferred_names:
            raise InvalidOptionError(f"output {output!r} is not a tensor of the model "
                                     f"(outputs: {', '.join(outputs)})")
    types, shapes = types_and_shapes(model)
    shape = shapes.get(output)
    if shape is None or None in shape:
        raise UnsupportedModelError(f"shape of output {output!r} unknown after shape inference")
    elem_type = types[output]
    attached = head.attach(emitter, output, shape, elem_type, label_shape)
    model.graph.node.extend(emitter.nodes)
    model.graph.initializer.extend(emitter.initializers)
    if attached.target is not None:
        model.graph.input.append(attached.target)
    return attached, elem_type


def _active_tensors(graph, wrt, loss, static) -> set[str]:
    """Tensors that depend on a parameter in ``wrt`` and on which the loss depends."""
    varied = set(wrt)
    for node in graph.node:
        if node.op_type in ZERO_DERIVATIVE_OPS:
            continue
        if any(name in varied for name in node.input):
            varied.update(name for name in node.output if name and static.is_float(name))
    needed = {loss}
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            needed.update(name for name in node.input if name)
    return varied & needed


def _weight_gradient(node, static) -> WeightGradientGeometry | None:
    """The recorded geometry when ``node`` outputs a convolution's weight gradient built by
    :func:`~.backward.linear.weight_gradient` whose operands still have static shapes."""
    if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx"):
        return None
    geometry = WeightGradientGeometry.of(node)
    if geometry is None or any(static.known_shape(n) is None for n in (geometry.x, geometry.g)):
        return None
    return geometry


def _sweep(graph, active, loss, emitter, static) -> dict[str, list[str]]:
    contributions: dict[str, list[str]] = {loss: [emitter.constant(1.0, static.elem_type(loss),
                                                                   "loss_seed")]}
    producers = {name: node for node in graph.node for name in node.output if name}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    for node in reversed(graph.node):
        if not any(name in contributions for name in node.output):
            continue
        requires = [name in active for name in node.input]
        if not any(requires):
            continue
        matched = match_batch_norm(node, producers, consumers)
        if matched is not None:
            pattern, inputs = matched
            fused_requires = tuple(name in active for name in inputs)
            ctx = BackwardContext(node, emitter, static, requires)
            grads = batch_norm_backward(ctx, pattern, ctx.sum(contributions[node.output[0]]),
                                        fused_requires)
            for name, grad in zip(inputs, grads):
                if grad is not None:
                    contributions.setdefault(name, []).append(grad)
            continue
        geometry = _weight_gradient(node, static)
        if geometry is not None:  # a convolution's weight gradient, differentiated again
            ctx = BackwardContext(node, emitter, static, requires)
            pair = (geometry.x, geometry.g)
            grads = weight_gradient_backward(ctx, geometry, ctx.sum(contributions[node.output[0]]),
                                             tuple(name in active for name in pair))
            for name, grad in zip(pair, grads):
                if grad is not None:
                    contributions.setdefault(name, []).append(grad)
            continue
        rule = RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if rule is None:
            raise MissingRuleError(
                f"no backward rule for {node_label(node)}: autodiff cannot differentiate "
                f"{node.domain + '.' if node.domain else ''}{node.op_type}"
            )
        ctx = BackwardContext(node, emitter, static, requires)
        output_grads = [
            ctx.sum(contributions[name]) if name in contributions else None
            for name in node.output
        ]
        input_grads = rule(ctx, output_grads)
        for name, grad, needed in zip(node.input, input_grads, requires):
            if needed and grad is not None:
                contributions.setdefault(name, []).append(grad)
    return contributions


def build_gradient_graph(
    model: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]],
    *,
    loss=None,
    wrt: Sequence[str] | None = None,
    label_shape: Sequence[int] | None = None,
    dtype: str = "float32",
    dropout: bool = False,
    seed: int = 0,
    gradients: bool = True,
) -> GradientGraph:
    """The gradient graph of ``loss`` (a head from :mod:`.loss`; default cross-entropy on the
    first output) with respect to ``wrt`` (default: every float parameter) at the given input
    shapes. With ``gradients=False`` the graph computes the loss only."""
    if dtype not in DTYPES:
        raise InvalidOptionError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    head = loss_head(loss if loss is not None else CrossEntropy(), None)
    parameters = float_parameters(model)
    wrt = tuple(parameters) if wrt is None else tuple(wrt)
    unknown = [name for name in wrt if name not in parameters]
    if unknown:
        raise InvalidOptionError(f"not float parameters of the model: {', '.join(unknown)}")
    lowered = lower(model, input_shapes, dropout=dropout, seed=seed)
    if dtype == "float64":
        lowered = to_float64(lowered)
    lowered = fold_constants(lowered, set(parameters))
    graph = lowered.graph
    taken = {name for node in graph.node for name in [*node.input, *node.output]}
    taken |= {v.name for v in [*graph.input, *graph.output]} | {i.name for i in graph.initializer}
    attached, elem_type = _attach_loss(lowered, head, label_shape, taken)
    inputs = tuple(v.name for v in graph.input if v.name in input_shapes)
    static = StaticInfo(lowered, variable=set(parameters))
    outputs = [helper.make_tensor_value_info(attached.loss, elem_type, [])]
    emitter = GraphEmitter(taken | {attached.loss}, "grad/")
    if gradients:
        active = _active_tensors(graph, wrt, attached.loss, static)
        contributions = _sweep(graph, active, attached.loss, emitter, static)
        for name in wrt:
            shape = static.shape(name)
            grad = emitter.reserve(name + "_grad")
            parts = contributions.get(name) or [
                emitter.constant(np.zeros(shape), static.elem_type(name), "zero_grad")]
            emitter.nodes.append(helper.make_node(
                "Sum" if len(parts) > 1 else "Identity", parts, [grad],
                name=emitter.fresh("grad_of_param")))
            outputs.append(helper.make_tensor_value_info(grad, static.elem_type(name), shape))
    graph.node.extend(emitter.nodes)
    graph.initializer.extend(emitter.initializers)
    graph.ClearField("output")
    graph.output.extend(outputs)
    declared = {v.name for v in graph.input}
    initializers = {init.name: init for init in graph.initializer}
    for name in parameters:
        if name not in declared:
            init = initializers[name]
            graph.input.append(helper.make_tensor_value_info(name, init.data_type,
                                                             list(init.dims)))
    lowered.ir_version = min(
        max(helper.find_min_ir_version_for(list(lowered.opset_import), True), 8), MAX_IR_VERSION)
    return GradientGraph(
        model=lowered, inputs=inputs,
        target=attached.target.name if attached.target is not None else None,
        loss=attached.loss, wrt=wrt if gradients else (), parameters=tuple(parameters),
        elem_type=elem_type,
    )
