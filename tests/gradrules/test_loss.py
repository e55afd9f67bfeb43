"""Loss heads (cross-entropy, mse, unit) against the autodiff's measured output gradient."""

from __future__ import annotations

import pytest

from tests.gradrules.oracle import assert_within, ratios
from tests.models import mlp


@pytest.mark.parametrize("loss", ["cross_entropy", "mse", "unit"])
def test_loss_heads(loss):
    found = ratios(mlp([32, 64, 10], activation="Tanh", seed=2), batch_size=32, loss=loss,
                   batches=16)
    assert "h1" in found  # the output
    assert_within(found, 0.1)
