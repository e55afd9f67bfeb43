"""Data-movement ops: each gradient against float64 central differences."""

import numpy as np
import pytest
from onnx import numpy_helper

from .gradcheck import check_gradients, node, randn


def const(name, values, dtype=np.int64):
    return node("Constant", [], name, value=numpy_helper.from_array(np.array(values, dtype)))


def test_reshape_with_inferred_and_copied_dims():
    check_gradients([const("s", [0, -1]), node("Reshape", ["a", "s"], "r"),
                     node("Mul", ["r", "r"])], {"a": randn(2, 3, 4)})


@pytest.mark.parametrize("axis", [0, 2, -1])
def test_flatten(axis):
    check_gradients([node("Flatten", ["a"], axis=axis)], {"a": randn(2, 3, 4)})


def test_transpose_with_and_without_perm():
    check_gradients([node("Transpose", ["a"], "t", perm=[1, 2, 0]), node("Transpose", ["t"])],
                    {"a": randn(2, 3, 4)})


def test_squeeze_unsqueeze():
    check_gradients([const("ax", [1]), node("Squeeze", ["a", "ax"], "s"),
                     const("ax2", [-1, 0]), node("Unsqueeze", ["s", "ax2"])],
                    {"a": randn(2, 1, 4)})


def test_split_uneven_with_an_unused_output():
    split = node("Split", ["a", "sizes"], "p", axis=1)
    split.output[:] = ["p", "q", "r"]
    check_gradients([const("sizes", [1, 2, 1]), split, node("Mul", ["p", "r"])],
                    {"a": randn(2, 4, 3)})


def test_split_with_num_outputs():
    split = node("Split", ["a"], "p", axis=-1, num_outputs=2)
    split.output[:] = ["p", "q"]
    check_gradients([split, node("Sub", ["p", "q"])], {"a": randn(3, 4)})


@pytest.mark.parametrize("starts,ends,axes,steps", [
    ([1], [3], [1], [1]),
    ([0, -3], [2, 100], [0, 2], [1, 1]),
    ([0], [5], [2], [2]),
    ([-1], [-100], [1], [-1]),
    ([3, 1], [0, 3], [2, 0], [-2, 1]),
])
def test_slice(starts, ends, axes, steps):
    check_gradients([const("st", starts), const("en", ends), const("ax", axes),
                     const("sp", steps), node("Slice", ["a", "st", "en", "ax", "sp"])],
                    {"a": randn(2, 3, 5)})


@pytest.mark.parametrize("indices,axis", [
    ([[0, 2], [2, 1]], 0), ([1, -1, 1], 1), (2, 0), ([[[0]], [[3]]], -1),
])
def test_gather(indices, axis):
    check_gradients([const("i", indices), node("Gather", ["a", "i"], axis=axis)],
                    {"a": randn(4, 3, 4)})


def test_gather_elements():
    check_gradients([const("i", [[0, 2, 2], [1, 1, 0]]),
                     node("GatherElements", ["a", "i"], axis=1)], {"a": randn(2, 3)})


def test_expand():
    check_gradients([const("s", [2, 3, 4]), node("Expand", ["a", "s"])], {"a": randn(3, 1)})


def test_tile():
    check_gradients([const("r", [2, 1, 3]), node("Tile", ["a", "r"])], {"a": randn(2, 3, 2)})


def test_pad_constant_with_axes():
    check_gradients([const("p", [1, 0, 2, 3]), const("ax", [0, 2]),
                     node("Pad", ["a", "p", "", "ax"], mode="constant")], {"a": randn(2, 3, 4)})


def test_identity():
    check_gradients([node("Identity", ["a"])], {"a": randn(3, 4)})


def test_cast_round_trip():
    check_gradients([node("Cast", ["a"], "d", to=11), node("Cast", ["d"], "e", to=1),
                     node("Mul", ["e", "a"])], {"a": randn(3, 4)})


def test_cast_like():
    check_gradients([node("CastLike", ["a", "b"], "c"), node("Mul", ["c", "b"])],
                    {"a": randn(3, 4), "b": randn(4, seed=1)})
