"""Training semantics at initialization, written out in standard ops so that any onnxruntime
build (and the autodiff) runs them the same way:

- every BatchNormalization normalises with the statistics of the batch it sees, whatever its
  ``training_mode`` (onnxruntime's default optimizations would otherwise drop a training-mode
  BatchNormalization whose running-statistic outputs are unused and use the running statistics,
  docs/design.md "Training semantics");
- every Dropout is the identity, or with a seed a fixed mask drawn once, so that repeated runs
  see the same function.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import UnsupportedModelError
from ..initializers import tensor_array
from .base import model_pass
from .emitter import GraphEmitter


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _names(model: onnx.ModelProto) -> set[str]:
    graph = model.graph
    taken = {name for node in graph.node for name in [*node.input, *node.output, node.name]}
    return taken | {init.name for init in graph.initializer} | {v.name for v in graph.input}


def _used(model: onnx.ModelProto) -> set[str]:
    """Tensors read by a node or returned by the graph."""
    return {n for node in model.graph.node for n in node.input} | {
        o.name for o in model.graph.output}


def _reduce(emitter: GraphEmitter, op_type: str, x: str, axes: list[int], opset: int) -> str:
    """A keepdims reduction over ``axes``: axes as an input from opset 18, an attribute before."""
    if opset >= 18:
        return emitter.node(op_type, [x, emitter.int64s(axes)], keepdims=1)
    return emitter.node(op_type, [x], axes=axes, keepdims=1)


def _batch_norm(node, emitter: GraphEmitter, elem_type: int, shape, used, opset) -> None:
    """``y = (x - mean_b) * (reshape(scale) / sqrt(var_b + eps)) + reshape(bias)`` with the
    biased ``var_b``, means over every axis but the channel axis 1; the running-statistic
    outputs, when used, are ``momentum * running + (1 - momentum) * batch statistic``
    (ONNX's training-mode definition); BatchNormalization-9 and older's saved mean and saved
    variance (outputs 3 and 4, which torch writes out at those opsets), when used, the batch's
    mean and biased variance: written, not left dangling (onnxruntime refuses a graph output
    no node produces, so the run that measures shapes failed on every opset-9 export)."""
    x, scale, bias, running_mean, running_var = node.input
    rank = len(shape)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    eps, momentum = attrs.get("epsilon", 1e-5), attrs.get("momentum", 0.9)
    axes = [0, *range(2, rank)]
    mean = _reduce(emitter, "ReduceMean", x, axes, opset)
    centered = emitter.node("Sub", [x, mean])
    squares = _reduce(emitter, "ReduceSumSquare", centered, axes, opset)
    count = 1.0 / float(np.prod([shape[a] for a in axes]))
    var = emitter.node("Mul", [squares, emitter.constant(count, elem_type)])
    std = emitter.node("Sqrt", [emitter.node("Add", [var, emitter.constant(eps, elem_type)])])
    per_channel = emitter.int64s([-1] + [1] * (rank - 2))
    gain = emitter.node("Div", [emitter.node("Reshape", [scale, per_channel]), std])
    emitter.nodes.append(helper.make_node(
        "Add", [emitter.node("Mul", [centered, gain]),
                emitter.node("Reshape", [bias, per_channel])],
        [node.output[0]], name=emitter.fresh("bn_output")))
    for index, running, batch in ((1, running_mean, mean), (2, running_var, var)):
        if len(node.output) > index and node.output[index] in used:
            flat = emitter.node("Reshape", [batch, emitter.int64s([-1])])
            kept = emitter.node("Mul", [running, emitter.constant(momentum, elem_type)])
            fresh = emitter.node("Mul", [flat, emitter.constant(1 - momentum, elem_type)])
            emitter.nodes.append(helper.make_node("Add", [kept, fresh], [node.output[index]],
                                                  name=emitter.fresh("bn_running")))
    for index, batch in ((3, mean), (4, var)):
        if len(node.output) > index and node.output[index] in used:
            emitter.nodes.append(helper.make_node(
                "Reshape", [batch, emitter.int64s([-1])], [node.output[index]],
                name=emitter.fresh("bn_saved")))


def _finish(model: onnx.ModelProto, emitter: GraphEmitter) -> None:
    model.graph.ClearField("node")
    model.graph.node.extend(emitter.nodes)
    model.graph.initializer.extend(emitter.initializers)
    if emitter.initializers and model.ir_version < 4:
        model.ir_version = 4  # initializers that are not graph inputs


def _is_default(node: onnx.NodeProto, op_type: str) -> bool:
    return node.op_type == op_type and node.domain in ("", "ai.onnx")


@model_pass(in_place=True)
def batch_statistics(model: onnx.ModelProto, shapes: Mapping[str, tuple],
                     types: Mapping[str, int]) -> None:
    """Rewrite every BatchNormalization into primitive ops that normalise with the batch's
    statistics (see ``_batch_norm``); ``shapes``/``types`` give each input's static shape and
    element type."""
    if not any(_is_default(node, "BatchNormalization") for node in model.graph.node):
        return
    opset, used = _default_opset(model), _used(model)
    emitter = GraphEmitter(_names(model), "prepared/")
    for node in model.graph.node:
        if not _is_default(node, "BatchNormalization"):
            emitter.nodes.append(node)
            continue
        shape = shapes.get(node.input[0])
        if shape is None or any(not isinstance(d, int) or d < 0 for d in shape):
            raise UnsupportedModelError(
                f"BatchNormalization {node.name!r}: input shape unknown ({shape})")
        _batch_norm(node, emitter, types.get(node.input[0], onnx.TensorProto.FLOAT),
                    tuple(shape), used, opset)
    _finish(model, emitter)


def _dropout_ratio(node: onnx.NodeProto, constants: Mapping[str, np.ndarray], opset: int) -> float:
    if opset < 12:
        return float(next((a.f for a in node.attribute if a.name == "ratio"), 0.5))
    name = node.input[1] if len(node.input) > 1 else ""
    if not name:
        return 0.5
    if name not in constants:
        raise UnsupportedModelError(f"Dropout node {node.name!r}: the ratio is not constant")
    return float(np.asarray(constants[name]).reshape(()))


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {init.name: tensor_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


@model_pass(in_place=True)
def fixed_dropout(model: onnx.ModelProto, *, seed: int | None = None,
                  shapes: Mapping[str, tuple] | None = None,
                  types: Mapping[str, int] | None = None) -> None:
    """Rewrite every Dropout into a fixed function of its input.

    ``seed=None``: the identity (Dropout as at inference); its mask output, where used, is
    all True (nothing dropped), the mask ONNX defines for ratio 0.
    With a seed: ``y = x * keep / (1 - ratio)``, ``keep`` drawn once per node in graph order
    from ``numpy.random.default_rng(seed)`` (``keep = U[0, 1) >= ratio``, of ``shapes[x]``);
    the mask output, where used, is ``keep``. Ratio 0 is the identity either way. The mask is
    bool from Dropout-10, of the input's type before (Dropout-7: ``mask: T``; ``types`` gives
    it, float by default)."""
    if not any(_is_default(node, "Dropout") for node in model.graph.node):
        return
    opset, used = _default_opset(model), _used(model)
    constants = _constants(model) if seed is not None else {}
    rng = np.random.default_rng(seed) if seed is not None else None
    emitter = GraphEmitter(_names(model), "prepared/")
    for node in model.graph.node:
        if not _is_default(node, "Dropout"):
            emitter.nodes.append(node)
            continue
        x, y = node.input[0], node.output[0]
        mask = node.output[1] if len(node.output) > 1 and node.output[1] in used else ""
        ratio = 0.0 if rng is None else _dropout_ratio(node, constants, opset)
        mask_type = onnx.TensorProto.BOOL if opset >= 10 else (types or {}).get(
            x, onnx.TensorProto.FLOAT)
        if ratio == 0.0:
            emitter.nodes.append(helper.make_node("Identity", [x], [y], name=node.name))
            if mask:
                true = helper.make_tensor("true", mask_type, [1], [1])
                emitter.nodes.append(helper.make_node(
                    "ConstantOfShape", [emitter.node("Shape", [x])], [mask], value=true,
                    name=emitter.fresh("dropout_mask")))
            continue
        if shapes is None or shapes.get(x) is None:
            raise UnsupportedModelError(f"Dropout node {node.name!r}: input shape unknown")
        keep = rng.random(shapes[x]) >= ratio
        elem_type = (types or {}).get(x, onnx.TensorProto.FLOAT)
        scale = emitter.constant(keep / (1.0 - ratio), elem_type, "dropout_mask")
        emitter.nodes.append(helper.make_node("Mul", [x, scale], [y], name=node.name))
        if mask:
            emitter.nodes.append(helper.make_node(
                "Identity", [emitter.constant(keep, mask_type, "dropout_keep")], [mask],
                name=emitter.fresh("dropout_mask")))
    _finish(model, emitter)


def training_semantics(model: onnx.ModelProto, shapes: Mapping[str, tuple],
                       types: Mapping[str, int]) -> None:
    """``model`` as the measurements run it, in place: BatchNormalization on batch statistics
    (a training-mode one with its running-statistic outputs left out is a model onnxruntime
    refuses as written), Dropout the identity; left as it is where a BatchNormalization's
    input has no static shape (``shapes`` still missing some: the run that measures them)."""
    try:
        batch_statistics(model, shapes, types)
    except UnsupportedModelError:
        return
    fixed_dropout(model, types=types)
