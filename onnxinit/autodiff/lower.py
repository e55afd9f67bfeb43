"""Lowering a model to the primitive ops that have backward rules.

- the default-domain opset is raised to at least 18 (axes of reductions and Split sizes are
  inputs from there on), with onnx's version converter;
- graph inputs get the concrete shapes of this run;
- BatchNormalization becomes primitives with batch statistics (training semantics):
  ``y = gamma (x - mean_b) / sqrt(var_b + eps) + beta`` with the biased variance over the batch
  and spatial axes;
- Dropout becomes Identity, or with ``dropout=True`` a multiplication by a fixed mask drawn
  from ``seed`` (scaled by 1 / (1 - ratio)), so repeated passes see the same function;
- model-local functions, and every op whose ONNX schema has a function body but which has no
  backward rule of its own (LayerNormalization, Gelu, HardSwish, GroupNormalization, Mish,
  Elu, Selu, ...), are inlined; ops with a rule (Softmax, LogSoftmax, Relu, ...) stay as they
  are, as inlining them would only make the graph slower.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx.inliner
from onnx import helper, numpy_helper, version_converter

from ..errors import UnsupportedModelError
from .backward import RULES
from .emitter import GraphEmitter
from .static import MAX_FOLDED_ELEMENTS, infer

MIN_OPSET = 18
MAX_INLINE_ROUNDS = 8


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise UnsupportedModelError("model imports no default-domain (ai.onnx) opset")


def _with_min_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    if default_opset(model) >= MIN_OPSET:
        return model
    try:
        return version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:  # noqa: BLE001 - the converter raises plain RuntimeError and others
        raise UnsupportedModelError(
            f"cannot upgrade the model from opset {default_opset(model)} to {MIN_OPSET} for "
            f"autodiff: {exc}"
        ) from None


def _set_input_shapes(graph: onnx.GraphProto, input_shapes: Mapping[str, Sequence[int]]) -> None:
    initializers = {init.name for init in graph.initializer}
    for value in graph.input:
        if value.name in initializers:
            continue
        if value.name not in input_shapes:
            raise UnsupportedModelError(f"no shape given for model input {value.name!r}")
        dims = value.type.tensor_type.shape
        dims.ClearField("dim")
        for size in input_shapes[value.name]:
            dims.dim.add().dim_value = int(size)
    graph.ClearField("value_info")


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _consumed(graph: onnx.GraphProto) -> set[str]:
    return {name for node in graph.node for name in node.input}


def _batch_norm(node, emitter: GraphEmitter, types, shapes, consumed) -> None:
    x, scale, bias, running_mean, running_var = node.input
    elem_type, rank = types[x], len(shapes[x])
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    eps, momentum = attrs.get("epsilon", 1e-5), attrs.get("momentum", 0.9)
    axes = emitter.int64s([0, *range(2, rank)])
    mean = emitter.node("ReduceMean", [x, axes], keepdims=1)
    centered = emitter.node("Sub", [x, mean])
    squares = emitter.node("ReduceSumSquare", [centered, axes], keepdims=1)
    count = 1.0 / float(np.prod([shapes[x][a] for a in (0, *range(2, rank))]))
    var = emitter.node("Mul", [squares, emitter.constant(count, elem_type)])
    std = emitter.node("Sqrt", [emitter.node("Add", [var, emitter.constant(eps, elem_type)])])
    per_channel = emitter.int64s([-1] + [1] * (rank - 2))
    gain = emitter.node("Div", [emitter.node("Reshape", [scale, per_channel]), std])
    emitter.nodes.append(helper.make_node(
        "Add", [emitter.node("Mul", [centered, gain]),
                emitter.node("Reshape", [bias, per_channel])],
        [node.output[0]], name=emitter.fresh("bn_output")))
    for index, running, batch in ((1, running_mean, mean), (2, running_var, var)):
        if len(node.output) > index and node.output[index] in consumed:
            flat = emitter.node("Reshape", [batch, emitter.int64s([-1])])
            kept = emitter.node("Mul", [running, emitter.constant(momentum, elem_type)])
            fresh = emitter.node("Mul", [flat, emitter.constant(1 - momentum, elem_type)])
            emitter.nodes.append(helper.make_node("Add", [kept, fresh], [node.output[index]],
                                                  name=emitter.fresh("bn_running")))


def _dropout(node, emitter: GraphEmitter, types, shapes, constants, consumed, rng) -> None:
    if len(node.output) > 1 and node.output[1] in consumed:
        raise UnsupportedModelError(f"Dropout node {node.name!r}: its mask output is used")
    x = node.input[0]
    ratio_name = node.input[1] if len(node.input) > 1 else ""
    ratio = float(constants[ratio_name]) if ratio_name in constants else 0.5
    if rng is None or ratio == 0.0:
        emitter.nodes.append(helper.make_node("Identity", [x], [node.output[0]], name=node.name))
        return
    if shapes.get(x) is None:
        raise UnsupportedModelError(f"Dropout node {node.name!r}: input shape unknown")
    keep = (rng.random(shapes[x]) >= ratio) / (1.0 - ratio)
    mask = emitter.constant(keep, types[x], "dropout_mask")
    emitter.nodes.append(helper.make_node("Mul", [x, mask], [node.output[0]], name=node.name))


def _rewrite_training_ops(model: onnx.ModelProto, dropout: bool, seed: int) -> None:
    graph = model.graph
    types, shapes = infer(model)
    constants = _constants(graph)
    consumed = _consumed(graph)
    rng = np.random.default_rng(seed) if dropout else None
    taken = {name for node in graph.node for name in [*node.input, *node.output, node.name]}
    taken |= {init.name for init in graph.initializer} | {v.name for v in graph.input}
    emitter = GraphEmitter(taken, "lowered/")
    for node in graph.node:
        if node.op_type == "BatchNormalization" and node.domain in ("", "ai.onnx"):
            if shapes.get(node.input[0]) is None:
                raise UnsupportedModelError(f"BatchNormalization {node.name!r}: input shape "
                                            "unknown")
            _batch_norm(node, emitter, types, shapes, consumed)
        elif node.op_type == "Dropout" and node.domain in ("", "ai.onnx"):
            _dropout(node, emitter, types, shapes, constants, consumed, rng)
        else:
            emitter.nodes.append(node)
    graph.ClearField("node")
    graph.node.extend(emitter.nodes)
    graph.initializer.extend(emitter.initializers)


# Composite ops kept as they are: onnxruntime runs them natively and they carry no gradient
# (Range's schema body is a Loop, which would hide a shape computation from constant folding).
NOT_INLINED = frozenset({"Range"})


def _composite_ops_without_rules(model: onnx.ModelProto) -> list[tuple[str, str]]:
    opset = default_opset(model)
    found = set()
    for node in model.graph.node:
        if (node.domain not in ("", "ai.onnx") or node.op_type in RULES
                or node.op_type in NOT_INLINED):
            continue
        try:
            schema = onnx.defs.get_schema(node.op_type, opset)
        except onnx.defs.SchemaError:
            continue
        if schema.has_function or schema.has_context_dependent_function:
            found.add((node.domain, node.op_type))
    return sorted(found)


def _type_initializers(graph: onnx.GraphProto) -> None:
    """The inliner needs a type for every initializer it meets (else: 'Type unknown')."""
    typed = {v.name for v in [*graph.input, *graph.value_info, *graph.output]}
    for init in graph.initializer:
        if init.name not in typed:
            graph.value_info.append(
                helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))


def _fill_default_attributes(graph: onnx.GraphProto, selected, opset: int) -> None:
    """Spell out defaulted attributes: the inliner drops a body's reference to an attribute the
    node leaves unset (Selu's alpha would become an empty Constant)."""
    op_types = {op_type for _, op_type in selected}
    for node in graph.node:
        if node.op_type not in op_types or node.domain not in ("", "ai.onnx"):
            continue
        present = {a.name for a in node.attribute}
        schema = onnx.defs.get_schema(node.op_type, opset)
        for name, attribute in schema.attributes.items():
            if name not in present and attribute.default_value.name:
                node.attribute.append(attribute.default_value)


def _inline_composites(model: onnx.ModelProto) -> onnx.ModelProto:
    large = [init for init in model.graph.initializer
             if int(np.prod(init.dims)) > MAX_FOLDED_ELEMENTS]
    if large:  # the inliner serializes the model: leave the weights out meanwhile
        names = {init.name for init in large}
        kept = [init for init in model.graph.initializer if init.name not in names]
        model.graph.ClearField("initializer")
        model.graph.initializer.extend(kept)
        model.graph.value_info.extend(
            helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
            for init in large)
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    for _ in range(MAX_INLINE_ROUNDS):
        selected = _composite_ops_without_rules(model)
        if not selected:
            break
        _type_initializers(model.graph)
        _fill_default_attributes(model.graph, selected, default_opset(model))
        model = onnx.inliner.inline_selected_functions(model, selected,
                                                       inline_schema_functions=True)
    else:
        raise UnsupportedModelError("inlining composite ops did not terminate")
    model.graph.initializer.extend(large)
    return model


def lower(
    model: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]],
    *,
    dropout: bool = False,
    seed: int = 0,
) -> onnx.ModelProto:
    """A copy of ``model`` made of primitive ops with backward rules (see the module doc)."""
    lowered = onnx.ModelProto()
    lowered.CopyFrom(model)
    lowered = _with_min_opset(lowered)
    _set_input_shapes(lowered.graph, input_shapes)
    _rewrite_training_ops(lowered, dropout, seed)
    lowered = _inline_composites(lowered)
    lowered.graph.ClearField("value_info")
    return lowered
