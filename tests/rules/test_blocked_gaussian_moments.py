"""Gaussian moments of a chain over many cells (``gaussian.gaussian_moments``, the composite
rule's 3,072 nodes for a kinked chain) a block of cells at a time, each distinct cell once: the
bits of the evaluation over all cells at once, and a mixture of experts' gathered rows (each
token's k experts' rows of equal statistics) evaluated once per token."""

from __future__ import annotations

import numpy as np
import pytest

from onnxinit.propagate import single_threaded_blas
from onnxinit.rules import gaussian
from onnxinit.rules.activations import _sigmoid

_RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with single_threaded_blas():
        yield


def _clamped_swiglu(x):
    """GPT-OSS's clamped gate (kinks: the composite rule)."""
    g = np.minimum(x, 7.0)
    return g * _sigmoid(1.702 * g)


def _rows(cells: int, repeat: int):
    """Means and variances of ``cells`` cells whose rows of 64 come ``repeat`` times each (a
    mixture of experts' k gathered rows per token), a last partial row apart."""
    rows = -(-cells // (64 * repeat))
    mean = np.repeat(_RNG.normal(size=(rows, 64)) * 0.1, repeat, axis=0).reshape(-1)[:cells]
    var = np.repeat(_RNG.gamma(2.0, size=(rows, 64)) * 0.02, repeat, axis=0).reshape(-1)[:cells]
    return mean.reshape(1, -1), var.reshape(1, -1)


@pytest.mark.parametrize("cells", [2049, 4531, 8449])
@pytest.mark.parametrize("repeat", [1, 2])
@pytest.mark.parametrize("fn, smooth", [(_clamped_swiglu, False), (np.tanh, True),
                                        (lambda x: np.log(x + 3.0), False)])
def test_gaussian_moments_by_cell_blocks_are_the_whole_array(monkeypatch, cells, repeat, fn,
                                                              smooth):
    """Blocks of distinct cells against every cell at once (the log leaves its domain in the
    far tail: the chunks with non-finite values)."""
    mean, var = _rows(cells, repeat)
    blocked = gaussian.gaussian_moments(fn, mean, var, smooth=smooth)
    monkeypatch.setattr(gaussian, "_BLOCKED_CELLS", 1 << 40)
    whole = gaussian.gaussian_moments(fn, mean, var, smooth=smooth)
    for a, b in zip(blocked, whole):
        assert a.shape == b.shape and a.tobytes() == b.tobytes()


def test_gathered_expert_rows_are_evaluated_once():
    """256 tokens x 2 experts x 64 features of per-token statistics (the k rows of a token
    equal): the clamped SwiGLU is evaluated on half the cells, not each cell at each of the
    composite rule's 3,072 nodes (GPT-OSS's analysis: 211-267 s in the sweep)."""
    mean, var = _rows(512 * 64, 2)
    evaluated = []

    def counted(x):
        evaluated.append(np.size(x))
        return _clamped_swiglu(x)

    e, v = gaussian.gaussian_moments(counted, mean, var)
    nodes = gaussian.COMPOSITE_Z.size
    assert sum(evaluated) <= nodes * mean.size // 2 + 2 * mean.size
    z = np.linspace(-10, 10, 200001)  # the first distinct cell by a fine Riemann sum
    y = _clamped_swiglu(mean[0, 0] + np.sqrt(var[0, 0]) * z)
    p = np.exp(-z * z / 2)
    p /= p.sum()
    assert np.isclose(e[0, 0], p @ y, rtol=1e-6) and np.isclose(v[0, 0], p @ y**2 - (p @ y)**2,
                                                                rtol=1e-5)
