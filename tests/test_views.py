"""onnxinit.views.broadcast_to against numpy's own: the same view (shape, strides, flags, data,
read-only) on random arrays, axes of length 1, reversed, strided and transposed layouts."""

import numpy as np
import pytest

from onnxinit.views import broadcast_to


def _random_array(rng):
    nd = int(rng.integers(0, 6))
    shape = tuple(int(rng.choice([1, 1, 2, 3, 5])) for _ in range(nd))
    if not nd:
        return np.array(rng.standard_normal())
    big = rng.standard_normal(tuple(2 * s + 1 for s in shape))
    steps = [int(rng.choice([-1, 1, 2])) for _ in shape]
    a = big[tuple(slice(None, None, st) for st in steps)][tuple(slice(0, s) for s in shape)]
    if rng.random() < 0.3:
        a = np.ascontiguousarray(a)
    if rng.random() < 0.2:
        a = a.transpose()
    return a


def _same_view(x, y):
    assert x.shape == y.shape and x.strides == y.strides and x.dtype == y.dtype
    assert x.__array_interface__["data"] == y.__array_interface__["data"]
    for flag in ("C_CONTIGUOUS", "F_CONTIGUOUS", "WRITEABLE", "ALIGNED"):
        assert x.flags[flag] == y.flags[flag], flag
    np.testing.assert_array_equal(x, y)


def test_own_shape_is_numpys_view():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        a = _random_array(rng)
        _same_view(broadcast_to(a, a.shape), np.broadcast_to(a, a.shape))


def test_broadcasting_and_other_inputs_go_to_numpy():
    a = np.arange(3.0).reshape(1, 3)
    _same_view(broadcast_to(a, (4, 3)), np.broadcast_to(a, (4, 3)))
    empty = np.zeros((0, 3))
    _same_view(broadcast_to(empty, (0, 3)), np.broadcast_to(empty, (0, 3)))
    np.testing.assert_array_equal(broadcast_to([1.0, 2.0], (2,)), [1.0, 2.0])
    np.testing.assert_array_equal(broadcast_to(2.5, (3,)), [2.5, 2.5, 2.5])
    with pytest.raises(ValueError):
        broadcast_to(np.zeros(3), (4,))


def test_view_is_read_only_and_leaves_the_array_writable():
    a = np.ones((1, 4, 2))
    view = broadcast_to(a, a.shape)
    with pytest.raises(ValueError):
        view[0, 0, 0] = 2.0
    a[0, 0, 0] = 3.0
    assert view[0, 0, 0] == 3.0
