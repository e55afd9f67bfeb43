"""onnxinit.views.broadcast_to against numpy's own: the same view (shape, strides, flags, data,
read-only) on random arrays, axes of length 1, reversed, strided and transposed layouts."""

import numpy as np
import pytest

from onnxinit.views import broadcast_arrays, broadcast_to


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


def test_broadcast_arrays_as_numpys():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    got, want = broadcast_arrays(a, b), np.broadcast_arrays(a, b)
    assert all(g is w for g, w in zip(got, want))  # numpy returns equal shapes as they are
    c = rng.standard_normal((1, 3))
    for g, w in zip(broadcast_arrays(a, c), np.broadcast_arrays(a, c)):
        assert g.shape == w.shape and g.strides == w.strides  # numpy's own (its flags warn)
        assert g.__array_interface__["data"] == w.__array_interface__["data"]
    m = np.memmap  # a subclass goes through numpy (which returns base-class views)
    assert all(type(x) is np.ndarray for x in broadcast_arrays(a.view(m), b))
