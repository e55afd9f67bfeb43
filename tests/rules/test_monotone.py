"""non_decreasing evaluates the chain a few points at a time: the same answer as the test on
all 97 points at once (each step's least value against each index's largest |value|),
chains that fall, barely fall or do not map point by point included."""

from __future__ import annotations

import numpy as np
import pytest

from onnxinit.moments import Elementwise
from onnxinit.rules import monotone
from onnxinit.rules.gaussian import compose

_CHAINS = {
    "relu": [Elementwise(("Relu",), lambda x: np.maximum(x, 0.0))],
    "scaled relu": [Elementwise(("Mul",), lambda x: x * np.array([1.0, 2.0, 0.5])[:, None]),
                    Elementwise(("Relu",), lambda x: np.maximum(x, 0.0))],
    "sine": [Elementwise(("Sin",), np.sin)],  # falls somewhere in most ranges
    "tiny dip": [Elementwise(("Dip",), lambda x: x - 1e-12 * np.sin(50 * x))],  # within 1e-9
    "dip": [Elementwise(("Dip",), lambda x: x - 0.5 * np.sin(20 * x))],
    "falls in one channel": [Elementwise(("Mul",),
                                         lambda x: x * np.array([1.0, -1.0, 1.0])[:, None])],
    "constant": [Elementwise(("Zero",), lambda x: np.zeros((1, 1, 1)))],
    "overflow": [Elementwise(("Exp",), lambda x: np.exp(300 * x))],
}


@pytest.mark.parametrize("name", sorted(_CHAINS))
@pytest.mark.parametrize("rows", [1, 5, 1 << 21])
def test_blocks_give_the_whole_answer(monkeypatch, name, rows):
    rng = np.random.default_rng(0)
    mean = rng.standard_normal((3, 4))
    var = rng.uniform(0.01, 4.0, (3, 4))
    chain = _CHAINS[name]
    z = np.linspace(-6.0, 6.0, 97).reshape(-1, 1, 1)
    whole = monotone._non_decreasing_whole(compose(chain), mean, np.sqrt(var), z)
    monkeypatch.setattr(monotone, "_ROWS", rows * mean.size)
    assert monotone.non_decreasing(chain, mean, var) is whole


def test_answers():
    mean, var = np.zeros((3, 4)), np.ones((3, 4))
    assert monotone.non_decreasing(_CHAINS["relu"], mean, var)
    assert monotone.non_decreasing(_CHAINS["tiny dip"], mean, var)
    assert not monotone.non_decreasing(_CHAINS["dip"], mean, var)
    assert not monotone.non_decreasing(_CHAINS["falls in one channel"], mean, var)
    assert not monotone.non_decreasing(_CHAINS["overflow"], mean, var)
