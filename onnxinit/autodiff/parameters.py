"""Which initializers are trainable parameters: float tensors consumed as values by at least one
node, not only as a shape, axes, pads, scales, bounds, exponent or running statistic."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..dtypes import FLOAT_TYPES

# (op type) -> input positions that configure the op rather than carry a differentiable value
CONFIGURATION_INPUTS: dict[str, frozenset[int]] = {
    "Reshape": frozenset({1}), "Expand": frozenset({1}), "Tile": frozenset({1}),
    "Slice": frozenset({1, 2, 3, 4}), "Pad": frozenset({1, 2, 3}), "Split": frozenset({1}),
    "Squeeze": frozenset({1}), "Unsqueeze": frozenset({1}), "CumSum": frozenset({1}),
    "ReduceMean": frozenset({1}), "ReduceSum": frozenset({1}), "ReduceMax": frozenset({1}),
    "ReduceMin": frozenset({1}), "ReduceProd": frozenset({1}), "ReduceL1": frozenset({1}),
    "ReduceL2": frozenset({1}), "ReduceSumSquare": frozenset({1}),
    "ReduceLogSum": frozenset({1}), "ReduceLogSumExp": frozenset({1}),
    "Resize": frozenset({1, 2, 3}), "Upsample": frozenset({1}), "ConstantOfShape": frozenset({0}),
    "Range": frozenset({0, 1, 2}), "OneHot": frozenset({1, 2}), "TopK": frozenset({1}),
    "Clip": frozenset({1, 2}), "Pow": frozenset({1}), "Dropout": frozenset({1, 2}),
    "BatchNormalization": frozenset({3, 4}), "Shape": frozenset({0}), "Size": frozenset({0}),
}


def float_parameters(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Parameter name -> value, in initializer order."""
    value_uses: set[str] = set()
    for node in model.graph.node:
        configuration = CONFIGURATION_INPUTS.get(node.op_type, frozenset())
        for index, name in enumerate(node.input):
            if name and index not in configuration:
                value_uses.add(name)
    return {
        init.name: numpy_helper.to_array(init)
        for init in model.graph.initializer
        if init.data_type in FLOAT_TYPES and init.name in value_uses
    }
