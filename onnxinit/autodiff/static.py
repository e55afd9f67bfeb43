"""What is known about a graph before it runs: static shapes and element types from onnx shape
inference with concrete input shapes, and the values of small tensors that do not depend on any
runtime input (shape arithmetic, Constant nodes, axes and pads), folded into initializers with
onnx's reference implementation."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from ..dtypes import FLOAT_TYPES
from ..errors import UnsupportedModelError

# Folding stops at tensors larger than this: folded values describe shapes, axes and the like.
MAX_FOLDED_ELEMENTS = 1 << 16
NEVER_FOLDED = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
     "Bernoulli", "If", "Loop", "Scan"}
)


def _type_entries(graph: onnx.GraphProto):
    yield from graph.input
    yield from graph.value_info
    yield from graph.output


def _without_large_data(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy for shape inference that declares large initializers as typed graph inputs
    instead of serializing their data (small ones stay: data propagation reads them)."""
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    graph = light.graph
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    declared = {value.name for value in model.graph.input}
    for init in model.graph.initializer:
        if int(np.prod(init.dims)) <= MAX_FOLDED_ELEMENTS:
            graph.initializer.append(init)
        elif init.name not in declared:
            graph.input.append(helper.make_tensor_value_info(init.name, init.data_type,
                                                             list(init.dims)))
    return light


def infer(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, tuple]]:
    """Element types and shapes (None for unknown dimensions) of the graph's tensors."""
    inferred = onnx.shape_inference.infer_shapes(_without_large_data(model), strict_mode=False,
                                                 data_prop=True)
    types, shapes = {}, {}
    for entry in _type_entries(inferred.graph):
        if not entry.type.HasField("tensor_type"):
            continue
        tensor_type = entry.type.tensor_type
        types[entry.name] = tensor_type.elem_type
        if tensor_type.HasField("shape"):
            shapes[entry.name] = tuple(
                d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim
            )
    for init in model.graph.initializer:
        types[init.name] = init.data_type
        shapes[init.name] = tuple(init.dims)
    return types, shapes


def _folded_outputs(node, values, shapes) -> list[np.ndarray] | None:
    """The outputs of ``node`` if they are computable now from constants, else None."""
    if node.domain not in ("", "ai.onnx") or node.op_type in NEVER_FOLDED:
        return None
    if node.op_type in ("Shape", "Size"):
        shape = shapes.get(node.input[0])
        if shape is None or None in shape:
            return None
        if node.op_type == "Size":
            return [np.array(int(np.prod(shape)), dtype=np.int64)]
        attrs = {a.name: a.i for a in node.attribute}
        start, end = attrs.get("start", 0), attrs.get("end", len(shape))
        return [np.array(shape[slice(start, end)], dtype=np.int64)]
    if not all(name == "" or name in values for name in node.input):
        return None
    inputs = {name: values[name] for name in node.input if name}
    try:
        results = ReferenceEvaluator(node).run(None, inputs)
    except Exception:  # noqa: BLE001 - an op the reference cannot fold stays in the graph
        return None
    results = [np.asarray(r) for r in results]
    return results if all(r.size <= MAX_FOLDED_ELEMENTS for r in results) else None


def fold_constants(model: onnx.ModelProto, variable: set[str]) -> onnx.ModelProto:
    """A copy of ``model`` in which every node computable from constants and static shapes
    (not from runtime inputs or the ``variable`` initializers) is replaced by initializers;
    repeated until shape inference learns nothing new."""
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    graph = folded.graph
    while True:
        _, shapes = infer(folded)
        values = {
            init.name: numpy_helper.to_array(init)
            for init in graph.initializer if init.name not in variable
        }
        kept, new_initializers = [], []
        for node in graph.node:
            outputs = _folded_outputs(node, values, shapes)
            if outputs is None:
                kept.append(node)
                continue
            for name, value in zip(node.output, outputs):
                if name:
                    values[name] = value
                    new_initializers.append(numpy_helper.from_array(value, name))
        if not new_initializers:
            return folded
        graph.ClearField("node")
        graph.node.extend(kept)
        graph.initializer.extend(new_initializers)
        graph.ClearField("value_info")


class StaticInfo:
    """Shapes, element types and constant values of the tensors of one (constant-folded)
    graph."""

    def __init__(self, model: onnx.ModelProto, variable: set[str]):
        """``variable``: initializers fed at run time (parameters); never constants."""
        self.types, self.shapes = infer(model)
        self.values: dict[str, np.ndarray] = {
            init.name: numpy_helper.to_array(init)
            for init in model.graph.initializer if init.name not in variable
        }

    def shape(self, name: str) -> tuple[int, ...]:
        """The static shape of ``name``; raises when inference could not determine it."""
        shape = self.shapes.get(name)
        if shape is None or None in shape:
            raise UnsupportedModelError(
                f"tensor {name!r}: shape unknown after shape inference with the given input "
                f"shapes ({shape}); autodiff needs static shapes here"
            )
        return shape

    def known_shape(self, name: str) -> tuple[int, ...] | None:
        shape = self.shapes.get(name)
        return None if shape is None or None in shape else shape

    def elem_type(self, name: str) -> int:
        if name not in self.types:
            raise UnsupportedModelError(f"tensor {name!r}: element type unknown after inference")
        return self.types[name]

    def is_float(self, name: str) -> bool:
        return self.types.get(name) in FLOAT_TYPES
