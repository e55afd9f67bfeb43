"""MatMul (batched, broadcast, 1-D operands, linear-layer weights) and Gemm."""

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
