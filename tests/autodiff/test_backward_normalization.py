"""Normalizations, inlined from their ONNX function bodies or lowered (BatchNormalization:
``tests/autodiff/test_fused.py``), against finite differences."""

from __future__ import annotations

import pytest

from .gradcheck import check_gradients, node, randn


@pytest.mark.parametrize("axis", [-1, -2])
def test_layer_normalization(axis):
    check_gradients([node("LayerNormalization", ["a", "g", "b"], axis=axis, epsilon=1e-5)],
                    {"a": randn(2, 3, 4), "g": randn(*[(3, 4), (4,)][axis == -1], seed=1),
                     "b": randn(*[(3, 4), (4,)][axis == -1], seed=2)}, opset=17)


def test_group_normalization():
    check_gradients([node("GroupNormalization", ["a", "g", "b"], num_groups=2, epsilon=1e-5)],
                    {"a": randn(2, 4, 3, 3), "g": randn(4, seed=1), "b": randn(4, seed=2)},
                    opset=21)
