"""Backward rules of the element-wise activations (E[f'(x)^2] under the forward
distribution) against the autodiff."""

from __future__ import annotations

import pytest

from tests.gradrules.oracle import assert_within, ratios
from tests.models import mlp


@pytest.mark.parametrize("activation", ["Tanh", "Sigmoid", "Relu", "Softplus", "Elu"])
def test_activation_gradients_match_the_autodiff(activation):
    found = ratios(mlp([64, 128, 128, 10], activation=activation, seed=4), batch_size=32)
    assert_within(found, 0.15)
