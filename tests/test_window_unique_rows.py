"""window_merges.unique_rows against numpy's np.unique(axis=0): the same classes in the same
order (the window classes' order decides the order of their mixture's sums)."""

from __future__ import annotations

import numpy as np
import pytest

from onnxinit.window_merges import unique_rows


@pytest.mark.parametrize("rows, columns", [(4, 57624), (64, 300), (16, 1), (7, 3), (1, 5)])
def test_same_first_indices_and_inverse_as_numpy(rows, columns):
    rng = np.random.default_rng(rows * columns)
    distinct = rng.normal(size=(max(1, rows // 3), columns))
    distinct[:, : columns // 2] = np.round(distinct[:, : columns // 2])  # ties on leading columns
    key = distinct[rng.integers(0, len(distinct), size=rows)]
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    got_first, got_inverse = unique_rows(key)
    np.testing.assert_array_equal(got_first, first)
    np.testing.assert_array_equal(got_inverse, inverse.ravel())


def test_negative_zero_is_zero_as_numpy_compares():
    key = np.array([[0.0, 1.0], [-0.0, 1.0], [2.0, -0.0], [2.0, 0.0], [-1.0, 3.0]])
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    got_first, got_inverse = unique_rows(key)
    np.testing.assert_array_equal(got_first, first)
    np.testing.assert_array_equal(got_inverse, inverse.ravel())
