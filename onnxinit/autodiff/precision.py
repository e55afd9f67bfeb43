"""Casting a lowered graph from float32 to float64: initializers, Constant and ConstantOfShape
values, Cast targets, dtype attributes of generator ops, and the declared types of inputs and
outputs."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..initializers import tensor_array

_DTYPE_ATTRIBUTES = {"Cast": "to", "EyeLike": "dtype", "RandomNormal": "dtype",
                     "RandomUniform": "dtype", "RandomNormalLike": "dtype",
                     "RandomUniformLike": "dtype"}


def _double_tensor(tensor: onnx.TensorProto) -> onnx.TensorProto:
    if tensor.data_type != TensorProto.FLOAT:
        return tensor
    return numpy_helper.from_array(tensor_array(tensor).astype(np.float64), tensor.name)


def _cast_node(node: onnx.NodeProto) -> None:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.TENSOR:
            attr.t.CopyFrom(_double_tensor(attr.t))
        elif node.op_type == "Constant" and attr.name == "value_float":
            value = helper.make_tensor("value", TensorProto.DOUBLE, [], [attr.f])
            attr.CopyFrom(helper.make_attribute("value", value))
        elif node.op_type == "Constant" and attr.name == "value_floats":
            value = helper.make_tensor("value", TensorProto.DOUBLE, [len(attr.floats)],
                                       list(attr.floats))
            attr.CopyFrom(helper.make_attribute("value", value))
        elif attr.name == _DTYPE_ATTRIBUTES.get(node.op_type) and attr.i == TensorProto.FLOAT:
            attr.i = TensorProto.DOUBLE


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` computing in float64 wherever it computed in float32."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    doubled = [_double_tensor(init) for init in graph.initializer]
    graph.ClearField("initializer")
    graph.initializer.extend(doubled)
    for node in graph.node:
        _cast_node(node)
    graph.ClearField("value_info")
    for value in [*graph.input, *graph.output]:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
    return out
