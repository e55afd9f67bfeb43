"""Nodes that break their op's schema in ways onnx's shape inference lets pass but onnx's
checker and onnxruntime refuse, found before any analysis.

- an empty name (``""``, the marker of an omitted optional input) given for an input the op
  requires: a Gather's data, a MatMul's operand. Shape inference skips the node (its output is
  left shapeless), the analysis passed it through with a warning; onnxruntime refuses the file
  ("input 0 is marked single but has an empty string in the graph").
- an If whose two branches return different numbers of outputs, or outputs of different
  element types: the analysis inlines the branch a constant condition picks
  (:mod:`onnxinit.passes.static_control`) and so never saw the other; onnxruntime refuses the
  file ("Mismatched tensor element type", "Graph attribute inferencing returned type
  information for N outputs. Expected M").
"""

from __future__ import annotations

import functools

import onnx
from onnx import defs

_SINGLE = defs.OpSchema.FormalParameterOption.Single


@functools.lru_cache(maxsize=4096)
def _schema(op_type: str, opset: int) -> defs.OpSchema | None:
    try:
        return defs.get_schema(op_type, opset, "")
    except defs.SchemaError:
        return None


def _label(node: onnx.NodeProto, index: int) -> str:
    return f"node {node.name or f'{node.op_type}_{index}'!r} ({node.op_type})"


def _empty_required_input(node: onnx.NodeProto, opset: int) -> str | None:
    schema = _schema(node.op_type, opset) if "" in node.input else None
    if schema is None:
        return None
    for i, name in enumerate(node.input):
        if not name and i < len(schema.inputs) and schema.inputs[i].option == _SINGLE:
            return (f"its input {i} ({schema.inputs[i].name}) is required but named '' (the "
                    f"marker of an omitted optional input)")
    return None


def _outputs(graph: onnx.GraphProto) -> list[tuple[str, int]]:
    """(kind, element type) of each output of a branch: 0 where not declared."""
    out = []
    for value in graph.output:
        kind = value.type.WhichOneof("value")
        elem = value.type.tensor_type.elem_type if kind == "tensor_type" else 0
        out.append((kind or "", elem))
    return out


def _if_mismatch(node: onnx.NodeProto) -> str | None:
    branches = {a.name: a.g for a in node.attribute if a.name in ("then_branch", "else_branch")}
    if len(branches) != 2:
        return None
    then_out, else_out = _outputs(branches["then_branch"]), _outputs(branches["else_branch"])
    if len(then_out) != len(else_out) or len(then_out) < len(node.output):
        return (f"its branches return {len(then_out)} and {len(else_out)} outputs for its "
                f"{len(node.output)}")
    for i, ((kind_a, elem_a), (kind_b, elem_b)) in enumerate(zip(then_out, else_out)):
        if kind_a and kind_b and kind_a != kind_b or elem_a and elem_b and elem_a != elem_b:
            types = [onnx.TensorProto.DataType.Name(e).lower() if e else k
                     for k, e in ((kind_a, elem_a), (kind_b, elem_b))]
            return f"its branches' output {i} is {types[0]} in one and {types[1]} in the other"
    return None


def _graph_violation(graph: onnx.GraphProto, opset: int) -> str | None:
    for index, node in enumerate(graph.node):
        reason = None
        if node.domain in ("", "ai.onnx"):
            reason = _empty_required_input(node, opset)
            if reason is None and node.op_type == "If":
                reason = _if_mismatch(node)
        if reason is not None:
            return f"{_label(node, index)}: {reason}"
        for attribute in node.attribute:
            subgraphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else (
                attribute.graphs)
            for sub in subgraphs:
                reason = _graph_violation(sub, opset)
                if reason is not None:
                    return reason
    return None


def schema_violation(model: onnx.ModelProto) -> str | None:
    """The first node of ``model`` (its subgraphs included) that breaks its op's schema as the
    module docstring says, in words; else None."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return _graph_violation(model.graph, opset)


__all__ = ["schema_violation"]
