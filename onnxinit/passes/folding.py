"""Constant folding: the values of tensors that do not depend on any runtime input (shape
arithmetic, Constant nodes, axes and pads), one node at a time with onnx's reference
implementation (onnxruntime where the reference has gaps)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..initializers import tensor_array
from ..runtime import make_session
from . import numpy_ops
from .base import model_pass
from .shapes import SMALL_TENSOR, types_and_shapes

log = logging.getLogger("onnxinit")

# Folded values describe shapes, axes and the like: larger results are left in the graph.
MAX_FOLDED_ELEMENTS = SMALL_TENSOR
# Ops whose output is random, so it is never constant even when its inputs are.
RANDOM_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                        "Bernoulli", "Multinomial", "Dropout"})
NEVER_FOLDED = RANDOM_OPS | {"If", "Loop", "Scan"}


def shape_op_value(node: onnx.NodeProto, input_shape: Sequence[int] | None) -> np.ndarray | None:
    """The output of a Shape (with start/end) or Size node from its input's static shape;
    None when the shape is not static."""
    if input_shape is None or any(not isinstance(d, int) or d < 0 for d in input_shape):
        return None
    if node.op_type == "Size":
        return np.array(int(np.prod(input_shape)), dtype=np.int64)
    attrs = {a.name: a.i for a in node.attribute}
    start, end = attrs.get("start", 0), attrs.get("end", None)
    return np.array(input_shape, dtype=np.int64)[start:end]


def evaluate_node(
    node: onnx.NodeProto,
    feeds: Mapping[str, np.ndarray],
    *,
    opset_import: Sequence[onnx.OperatorSetIdProto],
    ir_version: int,
    functions: Sequence[onnx.FunctionProto] = (),
    types: Mapping[str, int] | None = None,
) -> list[np.ndarray]:
    """The outputs of ``node`` (one per non-empty output name) on constant ``feeds``: with numpy
    for the common shape-computation ops (:mod:`.numpy_ops`), else evaluated as a one-node model
    of the given opsets and local functions; ``types`` gives element types (else taken from the
    arrays; 0, undefined, for outputs)."""
    opset = next((o.version for o in opset_import if o.domain in ("", "ai.onnx")), 0)
    try:
        return numpy_ops.evaluate(node, [feeds[n] if n else None for n in node.input], opset)
    except numpy_ops.NotHandled:
        pass
    except Exception as exc:  # noqa: BLE001 - invalid inputs: the evaluators below say why
        log.debug("numpy evaluation of %s failed (%s)", node.op_type, exc)
    # the reference evaluator is slow to import: only constant folding needs it
    from onnx.reference import ReferenceEvaluator

    types = types or {}
    inputs = [helper.make_tensor_value_info(
        n, types.get(n) or helper.np_dtype_to_tensor_dtype(np.asarray(feeds[n]).dtype), None)
        for n in node.input if n]
    outputs = [helper.make_tensor_value_info(n, types.get(n, 0), None)
               for n in node.output if n]
    model = helper.make_model(helper.make_graph([node], "fold", inputs, outputs),
                              opset_imports=list(opset_import), ir_version=ir_version)
    model.functions.extend(functions)
    feeds = {n: feeds[n] for n in node.input if n}
    try:
        outs = ReferenceEvaluator(model).run(None, feeds)
    except Exception as exc:  # noqa: BLE001 - the reference evaluator has gaps (e.g.
        # GatherElements over more than 64 entries): onnxruntime folds it instead
        log.debug("reference evaluator failed on %s (%s); using onnxruntime", node.op_type, exc)
        outs = make_session(model, device="cpu", optimize=False).run(None, feeds)
    return [np.asarray(out) for out in outs]


def _folded_outputs(model: onnx.ModelProto, node, values, shapes) -> list[np.ndarray] | None:
    """The outputs of ``node`` if they are computable now from constants, else None."""
    if node.domain not in ("", "ai.onnx") or node.op_type in NEVER_FOLDED:
        return None
    if node.op_type in ("Shape", "Size"):
        value = shape_op_value(node, shapes.get(node.input[0]))
        return None if value is None else [value]
    if not all(name == "" or name in values for name in node.input):
        return None
    try:
        results = evaluate_node(node, values, opset_import=model.opset_import,
                                ir_version=model.ir_version, functions=model.functions)
    except Exception:  # noqa: BLE001 - an op neither evaluator can fold stays in the graph
        return None
    return results if all(r.size <= MAX_FOLDED_ELEMENTS for r in results) else None


@model_pass(in_place=False)
def fold_constants(model: onnx.ModelProto, variable: set[str]) -> onnx.ModelProto:
    """A copy of ``model`` in which every node computable from constants and static shapes
    (not from runtime inputs or the ``variable`` initializers) is replaced by initializers;
    repeated until shape inference learns nothing new."""
    return folded_with_shapes(model, variable)[0]


@model_pass(in_place=False)
def folded_with_shapes(model: onnx.ModelProto, variable: set[str]
                       ) -> tuple[onnx.ModelProto, dict[str, tuple]]:
    """:func:`fold_constants` and the shapes of :func:`.shapes.types_and_shapes` of its result:
    those of the last round's inference, on the model as returned (that round folded nothing
    more and left it as it was)."""
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    graph = folded.graph
    while True:
        _, shapes = types_and_shapes(folded)
        values = {
            init.name: tensor_array(init)
            for init in graph.initializer if init.name not in variable
        }
        kept, new_initializers = [], []
        for node in graph.node:
            outputs = _folded_outputs(folded, node, values, shapes)
            if outputs is None:
                kept.append(node)
                continue
            for name, value in zip([n for n in node.output if n], outputs):
                values[name] = value
                new_initializers.append(numpy_helper.from_array(value, name))
        if not new_initializers:
            return folded, shapes
        graph.ClearField("node")
        graph.node.extend(kept)
        graph.initializer.extend(new_initializers)
        graph.ClearField("value_info")


__all__ = ["MAX_FOLDED_ELEMENTS", "NEVER_FOLDED", "RANDOM_OPS", "evaluate_node", "fold_constants",
           "folded_with_shapes", "shape_op_value"]
