"""Backward rules of the attention family (Softmax, LogSoftmax) against finite differences."""

from __future__ import annotations

import pytest

from .gradcheck import check_gradients, node, randn


@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis", [-1, 1, 0])
def test_softmax_family(op_type, axis):
    check_gradients([node(op_type, ["a"], axis=axis)], {"a": randn(2, 3, 4)})
