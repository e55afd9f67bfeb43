"""Element-wise arithmetic: each rule against float64 central differences, with broadcasting."""

import numpy as np
import pytest
from onnx import numpy_helper

from .gradcheck import check_gradients, node, randn


@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("b_shape", [(2, 3, 4), (3, 1), (), (1, 4)])
def test_binary_broadcasting(op_type, b_shape):
    b = randn(*b_shape, seed=1, low=0.5)
    check_gradients([node(op_type, ["a", "b"])], {"a": randn(2, 3, 4), "b": b})


def test_binary_broadcast_on_first_operand():
    check_gradients([node("Mul", ["a", "b"])], {"a": randn(3, 1), "b": randn(2, 3, 4, seed=1)})


@pytest.mark.parametrize("exponent", [2.0, 3.0, 0.5])
def test_pow_constant_exponent(exponent):
    base = np.abs(randn(3, 4)) + 0.5
    exponent_node = node("Constant", [], "e", value=__import__("onnx").numpy_helper.from_array(
        np.array(exponent, dtype=np.float32)))
    check_gradients([exponent_node, node("Pow", ["a", "e"])], {"a": base})


def test_pow_differentiable_exponent():
    check_gradients([node("Mul", ["a", "b"], "p"), node("Pow", ["a", "p"])],
                    {"a": np.abs(randn(3, 4)) + 0.5, "b": randn(4, seed=1)})


def test_sum_and_mean_variadic():
    inputs = {"a": randn(2, 3), "b": randn(3, seed=1), "c": randn(2, 1, seed=2)}
    check_gradients([node("Sum", ["a", "b", "c"], "s"), node("Mean", ["s", "a", "b"])], inputs)


@pytest.mark.parametrize("op_type", ["Max", "Min"])
def test_max_min(op_type):
    check_gradients([node(op_type, ["a", "b"])], {"a": randn(3, 4), "b": randn(4, seed=1)})


def test_where():
    from onnx import numpy_helper

    cond = numpy_helper.from_array(randn(3, 4, seed=3) > 0)
    check_gradients([node("Constant", [], "c", value=cond), node("Where", ["c", "a", "b"])],
                    {"a": randn(3, 4), "b": randn(4, seed=1)})


def test_concat_negative_axis_with_constant_operand():
    check_gradients([node("Constant", [], "k",
                          value=numpy_helper.from_array(np.ones((2, 1, 4), np.float32))),
                     node("Concat", ["a", "k", "b"], axis=-2)],
                    {"a": randn(2, 3, 4), "b": randn(2, 2, 4, seed=1)})
