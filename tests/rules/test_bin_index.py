"""source_classes.bin_index (each class's bin rank per channel, a table of the values present
where a channel spans few bins) against an independent oracle: numpy's ``unique`` per column."""

from __future__ import annotations

import numpy as np
import pytest

from onnxinit.rules.source_classes import bin_index, merged


def _oracle(bins: np.ndarray) -> np.ndarray:
    out = np.empty(bins.shape, np.int64)
    for c in range(bins.shape[1]):
        out[:, c] = np.unique(bins[:, c], return_inverse=True)[1].reshape(-1)
    return out


@pytest.mark.parametrize("spread", [0, 1, 3, 63, 64, 65, 1000, 1e12])
def test_bin_index_is_the_rank_among_distinct_values(spread):
    rng = np.random.default_rng(int(min(spread, 1e6)))
    for k, c in [(1, 1), (1, 7), (9, 1), (50, 16), (300, 3)]:
        bins = np.floor(rng.uniform(-spread / 2, spread / 2 + 1, (k, c)))
        got = bin_index(bins)
        assert got.dtype == np.int64 and got.shape == bins.shape
        np.testing.assert_array_equal(got, _oracle(bins))


def test_bin_index_with_negative_zero_and_one_column_constant():
    bins = np.array([[0.0, 5.0], [-0.0, 5.0], [-3.0, 5.0], [2.0, 5.0]])
    np.testing.assert_array_equal(bin_index(bins), _oracle(bins))


def test_merged_bins_far_apart_keep_their_classes():
    """Two classes 100 standard deviations apart stay two bins; a third within one bin joins
    its neighbour (law of total variance), whichever path bin_index takes."""
    mean = np.array([[0.0], [100.0], [0.5], [1e6]])
    var = np.ones((4, 1))
    weights = np.array([0.7, 0.1, 0.1, 0.1])
    out_m, out_v, out_w, index = merged(mean, var, weights)
    np.testing.assert_array_equal(index[:, 0], [0, 1, 0, 2])
    np.testing.assert_allclose(out_w[:, 0], [0.8, 0.1, 0.1])
    np.testing.assert_allclose(out_m[:, 0], [(0.7 * 0.0 + 0.1 * 0.5) / 0.8, 100.0, 1e6])
