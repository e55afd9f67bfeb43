"""MatMul (batched, broadcast, 1-D operands, linear-layer weights), Gemm, and Conv and
ConvTranspose with strides, pads, dilations, groups and auto_pad."""

import pytest

from .gradcheck import check_gradients, node, randn


@pytest.mark.parametrize("a_shape,b_shape", [
    ((3, 4), (4, 2)), ((2, 1, 3, 4), (5, 4, 2)), ((4,), (4, 2)), ((3, 4), (4,)),
    ((2, 3, 4), (4, 5)), ((4,), (2, 4, 3)), ((2, 3, 4), (4,)),
])
def test_matmul(a_shape, b_shape):
    check_gradients([node("MatMul", ["a", "b"])], {"a": randn(*a_shape),
                                                   "b": randn(*b_shape, seed=1)})


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", [(5,), (3, 1), ()])
def test_gemm(trans_a, trans_b, c_shape):
    a = randn(*((4, 3) if trans_a else (3, 4)))
    b = randn(*((5, 4) if trans_b else (4, 5)), seed=1)
    check_gradients([node("Gemm", ["a", "b", "c"], alpha=0.7, beta=1.3, transA=trans_a,
                          transB=trans_b)], {"a": a, "b": b, "c": randn(*c_shape, seed=2)})


def test_gemm_without_bias():
    check_gradients([node("Gemm", ["a", "b"], transB=1)], {"a": randn(3, 4),
                                                           "b": randn(5, 4, seed=1)})


@pytest.mark.parametrize("attrs,x_shape,w_shape", [
    ({}, (2, 3, 5, 5), (4, 3, 3, 3)),
    ({"strides": [2, 2], "pads": [1, 0, 2, 1]}, (2, 3, 6, 7), (4, 3, 3, 3)),
    ({"dilations": [2, 1], "pads": [2, 1, 2, 1]}, (1, 2, 7, 6), (3, 2, 3, 3)),
    ({"group": 2, "strides": [1, 2]}, (2, 4, 5, 6), (6, 2, 3, 2)),
    ({"group": 4, "pads": [1, 1, 1, 1]}, (2, 4, 5, 5), (4, 1, 3, 3)),
    ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, (1, 2, 6, 7), (3, 2, 4, 3)),
    ({"auto_pad": "SAME_LOWER", "strides": [2, 1]}, (1, 2, 5, 5), (3, 2, 2, 4)),
    ({"auto_pad": "VALID", "strides": [3, 3]}, (1, 2, 8, 7), (2, 2, 2, 2)),
    ({"strides": [2], "pads": [1, 1]}, (2, 3, 9), (4, 3, 3)),
    ({"pads": [1, 0, 0, 0, 1, 1]}, (1, 2, 3, 4, 3), (2, 2, 2, 2, 2)),
])
@pytest.mark.parametrize("bias", [True, False])
def test_conv(attrs, x_shape, w_shape, bias):
    inputs = {"x": randn(*x_shape), "w": randn(*w_shape, seed=1)}
    if bias:
        inputs["b"] = randn(w_shape[0], seed=2)
    check_gradients([node("Conv", list(inputs), **attrs)], inputs)


@pytest.mark.parametrize("attrs,x_shape,w_shape", [
    ({}, (2, 3, 4, 4), (3, 2, 3, 3)),
    ({"strides": [2, 2], "pads": [1, 0, 1, 1], "output_padding": [1, 0]}, (1, 2, 3, 4),
     (2, 3, 3, 3)),
    ({"group": 2, "dilations": [2, 1], "strides": [1, 2]}, (1, 4, 3, 3), (4, 1, 2, 3)),
    ({"strides": [2], "pads": [1, 2]}, (2, 2, 5), (2, 3, 4)),
])
def test_conv_transpose(attrs, x_shape, w_shape):
    inputs = {"x": randn(*x_shape), "w": randn(*w_shape, seed=1),
              "b": randn(w_shape[1] * attrs.get("group", 1), seed=2)}
    check_gradients([node("ConvTranspose", list(inputs), **attrs)], inputs)
