"""Quadratures evaluated a block of cells (columns) at a time, in cache, give the bits of the
evaluation over all cells at once: the smooth chains' moments and amplitudes
(``smooth_quadrature``), the squeeze-excite pools' cumulants (``chain_cumulants``),
the max pools' values at the grid's midpoints (``maxima``); and a max pool's absent taps
(count 0) change nothing, as if they were not there."""

from __future__ import annotations

import numpy as np
import pytest

from onnxinit.propagate import single_threaded_blas
from onnxinit.rules import cell_blocks, chain_cumulants, kurtosis, maxima, smooth_quadrature
from onnxinit.rules.activations import _sigmoid

_RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """As the propagation runs the rules (threads split a product's columns too)."""
    with single_threaded_blas():
        yield


def _silu(x):
    return x * _sigmoid(x)


# cell counts whose blocks end narrow or whose products change kernels (3,329: a last block
# of 769 columns; 48,000: a last node block of 10 nodes), and single blocks
@pytest.mark.parametrize("cells", [1, 7, 257, 1281, 3329, 4531, 6913, 48000, 103065])
@pytest.mark.parametrize("fn", [_silu, np.tanh])
def test_smooth_quadrature_cell_blocks_are_the_node_blocks(monkeypatch, cells, fn):
    mean = _RNG.normal(size=(1, cells)) * 2
    var = _RNG.gamma(2.0, size=(1, cells))
    blocked = smooth_quadrature.moments_and_amplitudes(fn, mean, var)
    monkeypatch.setattr(smooth_quadrature, "broadcasts_nothing", lambda *a: False)
    whole = smooth_quadrature.moments_and_amplitudes(fn, mean, var)
    for a, b in zip(blocked, whole):
        assert a.tobytes() == b.tobytes()


def test_a_per_channel_constant_takes_the_node_blocks():
    scale = np.array([0.5, 1.0, 2.0]).reshape(1, 3, 1, 1)
    assert not cell_blocks.broadcasts_nothing(lambda x: np.tanh(scale * x), 4)
    assert cell_blocks.broadcasts_nothing(lambda x: np.tanh(2.0 * x), 4)
    assert not cell_blocks.broadcasts_nothing(lambda x: x + np.zeros((3,) + x.shape), 4)


@pytest.mark.parametrize("columns, width, least", [(10, 4096, 256), (257, 256, 256),
                                                   (3329, 1280, 1000), (100000, 3542, 5051)])
def test_column_blocks_cover_the_columns_from_aligned_starts(columns, width, least):
    blocks = cell_blocks.column_blocks(columns, width, least)
    assert blocks[0].start == 0 and blocks[-1].stop == columns
    assert all(a.stop == b.start for a, b in zip(blocks, blocks[1:]))
    assert all(b.start % 256 == 0 for b in blocks)
    assert len(blocks) == 1 or all(b.stop - b.start >= least for b in blocks)


@pytest.mark.parametrize("depth, columns", [(96, 3329), (96, 20000), (37, 56448), (22, 56448),
                                            (5, 40001), (1, 2000)])
def test_products_of_column_blocks_are_the_whole_product(depth, columns):
    a = _RNG.normal(size=(9, depth))
    b = _RNG.normal(size=(depth, columns))
    least = cell_blocks.small_gemm_width(9, [depth], columns)
    whole, vector = a @ b, a[0] @ b
    for cols in cell_blocks.column_blocks(columns, (1 << 17) // depth, least):
        part = np.ascontiguousarray(b[:, cols])
        assert (a @ part).tobytes() == whole[:, cols].tobytes()
        assert (a[0] @ part).tobytes() == vector[cols].tobytes()


@pytest.mark.parametrize("nodes, cells", [(288, 257), (288, 56448), (192, 4099), (96, 7)])
def test_pool_cumulants_by_column_blocks(monkeypatch, nodes, cells):
    y = _RNG.normal(size=(nodes, cells)) ** 3 + _RNG.normal(size=cells)
    w = _RNG.random(nodes)
    w /= w.sum()
    blocked = chain_cumulants.cumulants(y, w)
    monkeypatch.setattr(chain_cumulants, "_COLUMN_BLOCK", 1 << 40)
    whole = chain_cumulants.cumulants(y, w)
    for a, b in zip(blocked, whole):
        assert a.tobytes() == b.tobytes()


def _chain(kind: str, rank: int):
    if kind == "silu":
        return _silu
    if kind == "hardswish":
        return lambda x: x * np.clip(x + 3, 0, 6) / 6
    scale = _RNG.uniform(0.5, 2.0, size=(24,) + (1,) * (rank - 2))  # per channel: whole array
    return lambda x: _silu(scale * x)


@pytest.mark.parametrize("shape", [(1, 24, 1, 1), (1, 24, 14, 14), (1, 24, 40, 40), (1, 24, 7)])
@pytest.mark.parametrize("mixture", [False, True])
@pytest.mark.parametrize("kind", ["silu", "hardswish", "per_channel"])
def test_chain_cumulants_are_those_of_the_chain_values(shape, mixture, kind):
    fn = _chain(kind, len(shape))
    mean = _RNG.normal(size=shape)
    var = _RNG.gamma(2.0, size=shape)
    v = _RNG.uniform(0.0, 2.0, shape[1]) if mixture else None
    y, w = kurtosis.chain_values(mean, var, [fn], shape[1], len(shape), v, coarse=True)
    expected = chain_cumulants.cumulants(y, w)
    got = chain_cumulants.chain_cumulants(mean, var, [fn], shape[1], len(shape), v, coarse=True)
    for a, b in zip(got, expected):
        assert a.tobytes() == b.tobytes()
    assert chain_cumulants.chain_cumulants(mean, var, [np.log], shape[1], len(shape)) is None


def test_max_pool_values_at_midpoints_by_blocks(monkeypatch):
    mean = _RNG.normal(size=(9, 2, 1, 6, 5, 5))
    std = _RNG.gamma(2.0, size=mean.shape) * 0.5
    count = np.ones(mean.shape)
    relu = lambda x: np.maximum(x, 0.0)  # noqa: E731
    blocked = maxima.max_of_gaussians(mean, std, count, relu)
    monkeypatch.setattr(maxima, "broadcasts_nothing", lambda *a: False)
    whole = maxima.max_of_gaussians(mean, std, count, relu)
    for a, b in zip(blocked, whole):
        assert a.tobytes() == b.tobytes()


def test_absent_taps_are_as_if_they_were_not_there(monkeypatch):
    """Each problem with its absent taps (count 0, some of them constant) against the same
    problem with those taps removed; one tap at a time into the product (``_CHUNK`` 1), so
    the only difference could be the factors of the absent taps."""
    monkeypatch.setattr(maxima, "_CHUNK", 1)
    taps = 9
    for seed in range(6):
        rng = np.random.default_rng(seed)
        mean = rng.normal(size=(taps, 1))
        std = rng.gamma(2.0, size=(taps, 1)) * 0.5
        std[rng.random(std.shape) < 0.3] = 0.0  # constant taps, present or absent
        count = (rng.random((taps, 1)) < 0.7).astype(float)
        count[0] = 1.0
        keep = count[:, 0] > 0
        fn = np.tanh
        got = maxima.max_of_gaussians(mean, std, count, fn)
        alone = maxima.max_of_gaussians(mean[keep], std[keep], count[keep], fn)
        for a, b in zip(got, alone):
            assert a.tobytes() == b.tobytes()

