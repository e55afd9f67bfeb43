"""MaxPool (Indices + ScatterElements), AveragePool (exact divisors), GlobalAveragePool."""

import pytest

from onnxinit.errors import UnsupportedModelError

from .gradcheck import check_gradients, node, randn


@pytest.mark.parametrize("attrs,shape", [
    ({"kernel_shape": [2, 2], "strides": [2, 2]}, (2, 3, 4, 4)),
    ({"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, (1, 2, 5, 6)),
    ({"kernel_shape": [3, 2], "strides": [2, 2], "ceil_mode": 1}, (1, 2, 6, 5)),
    ({"kernel_shape": [2, 2], "dilations": [2, 2]}, (1, 2, 5, 5)),
    ({"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}, (1, 2, 5, 6)),
    ({"kernel_shape": [3], "strides": [2], "pads": [1, 0]}, (2, 2, 7)),
])
def test_max_pool(attrs, shape):
    check_gradients([node("MaxPool", ["x"], **attrs)], {"x": randn(*shape)})


def test_max_pool_refuses_column_major_indices():
    with pytest.raises(UnsupportedModelError, match="storage_order"):
        check_gradients([node("MaxPool", ["x"], kernel_shape=[2, 2], storage_order=1)],
                        {"x": randn(1, 1, 4, 4)})


@pytest.mark.parametrize("attrs,shape", [
    ({"kernel_shape": [2, 2], "strides": [2, 2]}, (2, 3, 4, 4)),
    ({"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, (1, 2, 5, 6)),
    ({"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
      "count_include_pad": 1}, (1, 2, 5, 6)),
    ({"kernel_shape": [3, 2], "strides": [2, 2], "ceil_mode": 1}, (1, 2, 6, 5)),
    ({"kernel_shape": [3, 3], "strides": [1, 2], "auto_pad": "SAME_LOWER"}, (1, 2, 5, 6)),
    ({"kernel_shape": [2], "strides": [1], "pads": [0, 1]}, (2, 2, 5)),
])
def test_average_pool(attrs, shape):
    check_gradients([node("AveragePool", ["x"], **attrs)], {"x": randn(*shape)})


def test_global_average_pool():
    check_gradients([node("GlobalAveragePool", ["x"])], {"x": randn(2, 3, 4, 5)})
