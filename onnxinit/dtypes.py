"""ONNX element types by kind: the one definition every module uses."""

from __future__ import annotations

from onnx import TensorProto

# float32, float64, float16, bfloat16: the types of activations and learnable tensors
FLOAT_TYPES = frozenset(
    {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}
)
INT_TYPES = frozenset(
    {TensorProto.INT64, TensorProto.INT32, TensorProto.INT16, TensorProto.INT8,
     TensorProto.UINT64, TensorProto.UINT32, TensorProto.UINT16, TensorProto.UINT8}
)
