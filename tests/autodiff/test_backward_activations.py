"""Activations, the softmax family, and composite ops lowered by inlining their ONNX bodies."""

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


@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis", [-1, 1, 0])
def test_softmax_family(op_type, axis):
    check_gradients([node(op_type, ["a"], axis=axis)], {"a": randn(2, 3, 4)})


@pytest.mark.parametrize("op_type,attrs,opset", [
    ("Gelu", {}, 20), ("Gelu", {"approximate": "tanh"}, 20), ("Elu", {"alpha": 0.7}, 18),
    ("Selu", {}, 18), ("HardSwish", {}, 18), ("Mish", {}, 18), ("Celu", {}, 18),
])
def test_inlined_composite(op_type, attrs, opset):
    check_gradients([node(op_type, ["a"], **attrs)], {"a": randn(3, 5, low=0.05)}, opset=opset)


@pytest.mark.parametrize("axis", [-1, -2])
def test_layer_normalization(axis):
    check_gradients([node("LayerNormalization", ["a", "g", "b"], axis=axis, epsilon=1e-5)],
                    {"a": randn(2, 3, 4), "g": randn(*[(3, 4), (4,)][axis == -1], seed=1),
                     "b": randn(*[(3, 4), (4,)][axis == -1], seed=2)}, opset=17)


def test_group_normalization():
    check_gradients([node("GroupNormalization", ["a", "g", "b"], num_groups=2, epsilon=1e-5)],
                    {"a": randn(2, 4, 3, 3), "g": randn(4, seed=1), "b": randn(4, seed=2)},
                    opset=21)
