"""Reductions: axes as input (opset 18) or attribute (older opsets, upgraded by lowering),
keepdims, negative axes, all axes, noop_with_empty_axes."""

import numpy as np
import pytest
from onnx import numpy_helper

from .gradcheck import check_gradients, node, randn


def _axes(values):
    return node("Constant", [], "axes", value=numpy_helper.from_array(np.array(values, np.int64)))


@pytest.mark.parametrize("op_type", ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin",
                                     "ReduceSumSquare", "ReduceL2"])
@pytest.mark.parametrize("axes,keepdims", [([1], 1), ([-1, 0], 0), ([2], 0)])
def test_reduce_with_axes(op_type, axes, keepdims):
    check_gradients([_axes(axes), node(op_type, ["a", "axes"], keepdims=keepdims)],
                    {"a": randn(2, 3, 4)})


@pytest.mark.parametrize("op_type", ["ReduceSum", "ReduceMean"])
def test_reduce_all_axes(op_type):
    check_gradients([node(op_type, ["a"], "r", keepdims=0), node("Mul", ["r", "a"])],
                    {"a": randn(2, 3)})


def test_reduce_noop_with_empty_axes():
    check_gradients([node("ReduceSum", ["a"], noop_with_empty_axes=1)], {"a": randn(2, 3)})


def test_reduce_mean_axes_attribute_in_opset_13():
    check_gradients([node("ReduceMean", ["a"], axes=[-1], keepdims=1)], {"a": randn(2, 3, 4)},
                    opset=13)
