"""The Edgeworth terms' node values (``edgeworth._chain_at_nodes``) evaluated a block of
nodes at a time are those of one evaluation on all nodes, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from onnxinit.rules import edgeworth


def _at_once(fn, mean, var):
    y = np.asarray(fn(edgeworth._nodes(mean, var)), dtype=np.float64)
    return y.reshape(y.shape[0], -1)


@pytest.mark.parametrize("block", [1, 7, 1 << 15])
def test_blocks_of_nodes_give_the_values_of_one_evaluation(monkeypatch, block):
    monkeypatch.setattr(edgeworth, "_NODE_BLOCK", block * 4 * 5 * 5)
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(1, 4, 5, 5))
    var = rng.uniform(0.0, 2.0, size=(1, 4, 5, 5))
    scale = rng.normal(size=(1, 4, 1, 1))  # a per-channel constant, laid out at the rank
    chains = [lambda x: np.maximum(x, 0.0),
              lambda x: np.tanh(scale * x) + 0.1,
              lambda x: x / (1.0 + np.exp(-x))]
    for fn in chains:
        got = edgeworth._chain_at_nodes(fn, mean, var)
        assert got.tobytes() == _at_once(fn, mean, var).tobytes()


def test_a_function_that_broadcasts_further_is_evaluated_at_once(monkeypatch):
    monkeypatch.setattr(edgeworth, "_NODE_BLOCK", 8)
    mean, var = np.zeros((1, 2, 1, 1)), np.ones((1, 2, 1, 1))
    wide = np.arange(3.0).reshape(1, 1, 1, 3)
    got = edgeworth._chain_at_nodes(lambda x: x + wide, mean, var)
    assert got.tobytes() == _at_once(lambda x: x + wide, mean, var).tobytes()
