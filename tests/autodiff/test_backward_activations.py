"""Activations and other unary maps (composite ones lowered by inlining their ONNX bodies)
against finite differences."""

import numpy as np
import pytest
from onnx import numpy_helper

from .gradcheck import check_gradients, node, randn


@pytest.mark.parametrize("op_type,attrs", [
    ("Relu", {}), ("LeakyRelu", {"alpha": 0.1}), ("Sigmoid", {}), ("Tanh", {}), ("Erf", {}),
    ("Softplus", {}), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}),
])
def test_activation(op_type, attrs):
    check_gradients([node(op_type, ["a"], **attrs)], {"a": randn(3, 5, low=0.05)})


def test_prelu_with_channel_slope():
    check_gradients([node("PRelu", ["a", "s"])], {"a": randn(2, 3, 4, low=0.05),
                                                  "s": randn(3, 1, seed=1)})


def test_clip_with_bounds():
    bounds = [node("Constant", [], "lo", value=numpy_helper.from_array(np.float32(-0.5))),
              node("Constant", [], "hi", value=numpy_helper.from_array(np.float32(0.7)))]
    values = randn(4, 5)
    values[np.abs(np.abs(values) - 0.6) < 0.15] += 0.3  # keep clear of the bounds
    check_gradients(bounds + [node("Clip", ["a", "lo", "hi"])], {"a": values})


@pytest.mark.parametrize("op_type,attrs,opset", [
    ("Gelu", {}, 20), ("Gelu", {"approximate": "tanh"}, 20), ("Elu", {"alpha": 0.7}, 18),
    ("Selu", {}, 18), ("HardSwish", {}, 18), ("Mish", {}, 18), ("Celu", {}, 18),
])
def test_inlined_composite(op_type, attrs, opset):
    check_gradients([node(op_type, ["a"], **attrs)], {"a": randn(3, 5, low=0.05)}, opset=opset)


@pytest.mark.parametrize("op_type,low", [
    ("Neg", None), ("Abs", 0.1), ("Exp", None), ("Sin", None),
    ("Cos", None), ("Reciprocal", 0.5),
])
def test_unary(op_type, low):
    check_gradients([node(op_type, ["a"])], {"a": randn(3, 4, low=low)})


@pytest.mark.parametrize("op_type", ["Sqrt", "Log"])
def test_unary_positive_domain(op_type):
    check_gradients([node(op_type, ["a"])], {"a": np.abs(randn(3, 4)) + 0.5})
