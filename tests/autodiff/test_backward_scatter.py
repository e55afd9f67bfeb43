"""Scatters (ScatterElements, ScatterND): each gradient against float64 central differences."""

import numpy as np
import pytest
from onnx import numpy_helper

from .gradcheck import check_gradients, node, randn


def const(name, values, dtype=np.int64):
    return node("Constant", [], name, value=numpy_helper.from_array(np.array(values, dtype)))


@pytest.mark.parametrize("reduction", ["none", "add"])
@pytest.mark.parametrize("axis", [0, -1])
def test_scatter_elements(reduction, axis):
    indices = [[1, 0, 3], [2, 2, 0]] if reduction == "add" else [[1, 0, 3], [2, 3, 0]]
    if axis == 0:
        indices = [[1, 0, 2, 0], [2, 1, 0, 1]] if reduction == "none" else [[1, 0, 2, 0],
                                                                              [1, 1, 0, 2]]
    updates = randn(2, 3) if axis == -1 else randn(2, 4)
    check_gradients([const("i", indices),
                     node("ScatterElements", ["a", "i", "u"], axis=axis, reduction=reduction)],
                    {"a": randn(3, 4), "u": updates})


@pytest.mark.parametrize("reduction", ["none", "add"])
def test_scatter_nd(reduction):
    """Rows of a [4, 3, 2] tensor written (I indexes the first axis) and single elements
    (I indexes the first two); 'add' with a repeated row."""
    rows = [[2], [0], [2]] if reduction == "add" else [[2], [0], [3]]
    check_gradients([const("i", rows), node("ScatterND", ["a", "i", "u"], reduction=reduction)],
                    {"a": randn(4, 3, 2), "u": randn(3, 3, 2)})
    check_gradients([const("i", [[1, 2], [3, 0]]),
                     node("ScatterND", ["a", "i", "u"], reduction=reduction)],
                    {"a": randn(4, 3, 2), "u": randn(2, 2)})
