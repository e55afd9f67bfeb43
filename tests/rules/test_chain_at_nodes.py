"""A chain's values at quadrature nodes evaluated a block of nodes at a time
(``gaussian.chain_at_nodes``: the Edgeworth terms, the kurtosis' scale mixtures) are those of
one evaluation on all nodes, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from onnxinit.rules import gaussian, kurtosis

_RNG = np.random.default_rng(0)
MEAN = _RNG.normal(size=(1, 4, 5, 5))
STD = _RNG.uniform(0.0, 2.0, size=(1, 4, 5, 5))
SCALE = _RNG.normal(size=(1, 4, 1, 1))  # a per-channel constant, laid out at the rank
CHAINS = [lambda x: np.maximum(x, 0.0),
          lambda x: np.tanh(SCALE * x) + 0.1,
          lambda x: x / (1.0 + np.exp(-x))]
NODES = np.linspace(-4.0, 4.0, 23)


@pytest.mark.parametrize("block", [1, 7, 1 << 15])
@pytest.mark.parametrize("fn", CHAINS)
def test_blocks_of_nodes_give_the_values_of_one_evaluation(monkeypatch, block, fn):
    monkeypatch.setattr(gaussian, "_NODE_BLOCK", block * MEAN.size)
    got = gaussian.chain_at_nodes(fn, MEAN, STD, NODES)
    at_once = fn(MEAN[None] + STD[None] * NODES.reshape(-1, 1, 1, 1, 1))
    assert got.tobytes() == at_once.reshape(NODES.size, -1).tobytes()


def test_a_constant_function_is_broadcast_and_a_wider_one_refused():
    got = gaussian.chain_at_nodes(lambda x: 2.0, MEAN, STD, NODES)
    assert got.shape == (NODES.size, MEAN.size) and np.all(got == 2.0)
    with pytest.raises(ValueError):
        gaussian.chain_at_nodes(lambda x: x + np.zeros((3,) + x.shape), MEAN, STD, NODES)


@pytest.mark.parametrize("fn", CHAINS)
def test_the_kurtosis_scale_mixture_values_are_the_direct_ones(monkeypatch, fn):
    monkeypatch.setattr(gaussian, "_NODE_BLOCK", 3 * MEAN.size)
    v = np.array([0.0, 0.2, 0.5, 1.0])
    got, weights = kurtosis.chain_values(MEAN, STD**2, [fn], 4, 4, v, coarse=True)
    sig2, w = kurtosis.mixture_nodes(v)
    t = kurtosis._TC.reshape(-1, 1, 1, 1)
    direct = [fn(MEAN + np.sqrt(STD**2 * s2.reshape(1, 4, 1, 1)) * t).reshape(t.size, -1)
              for s2 in sig2]
    assert got.tobytes() == np.concatenate(direct).tobytes()
    assert weights.tobytes() == np.concatenate([kurtosis._WC * wi for wi in w]).tobytes()
