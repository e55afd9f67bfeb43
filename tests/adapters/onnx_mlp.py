"""An ONNX MLP built from ``[in, out]`` kernels, laid out as jax2onnx and tf2onnx write dense
layers (``MatMul`` then ``Add``), with exporter-style names unrelated to the framework's."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ..models import make_model


def dense_mlp(layers: list[tuple[np.ndarray, np.ndarray]], batch: int = 4,
              activation: str = "Tanh", prefix: str = "StatefulPartitionedCall/"):
    """``layers``: (kernel [in, out], bias [out]); activation between layers."""
    nodes, inits = [], []
    x = "x"
    for i, (kernel, bias) in enumerate(layers):
        k, b = f"{prefix}MatMul_{i}/ReadVariableOp:0", f"{prefix}BiasAdd_{i}/ReadVariableOp:0"
        inits += [numpy_helper.from_array(np.asarray(kernel, np.float32), k),
                  numpy_helper.from_array(np.asarray(bias, np.float32), b)]
        nodes += [helper.make_node("MatMul", [x, k], [f"m{i}"], name=f"dense{i}"),
                  helper.make_node("Add", [f"m{i}", b], [f"h{i}"], name=f"bias{i}")]
        x = f"h{i}"
        if i + 1 < len(layers):
            nodes.append(helper.make_node(activation, [x], [f"a{i}"], name=f"act{i}"))
            x = f"a{i}"
    d_in, d_out = layers[0][0].shape[0], layers[-1][0].shape[1]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, d_in])],
                      [helper.make_tensor_value_info(x, TensorProto.FLOAT, [batch, d_out])], inits)
