"""Position classes (onnxinit.spatial) against a brute-force per-position computation."""

from __future__ import annotations

import numpy as np
import pytest

from onnxinit.moments import Moments
from onnxinit import class_gather, spatial
from onnxinit.spatial import attach, dense, joint, positions, window


@pytest.mark.parametrize("size,out,kernel,stride,dilation,begin", [
    (9, 9, 3, 1, 1, 1), (10, 5, 3, 2, 1, 1), (11, 7, 3, 1, 2, 1), (8, 4, 2, 2, 1, 0),
    (12, 3, 7, 4, 1, 3),
])
def test_window_classes_match_the_taps_of_every_position(size, out, kernel, stride, dilation,
                                                         begin):
    rng = np.random.default_rng(0)
    in_map = np.minimum(np.arange(size), size - 1 - np.arange(size)).clip(max=2)  # rings
    values = rng.standard_normal(3)[in_map]  # a value per input class
    out_map, taps = window(in_map, out, kernel, stride, dilation, begin)
    for q in range(out):
        pos = q * stride - begin + np.arange(kernel) * dilation
        seen = [values[in_map[p]] if 0 <= p < size else None for p in pos]
        row = taps[out_map[q]]
        assert seen == [values[c] if c >= 0 else None for c in row]
    # positions with the same taps share a class: no more classes than distinct tap rows
    assert len(taps) == len({tuple(r) for r in taps})


def test_attach_totals_are_the_law_of_total_variance_over_positions():
    rng = np.random.default_rng(1)
    maps = (np.array([0, 1, 1, 1, 2]), np.array([0, 1, 1, 0]))
    mean, var = rng.standard_normal((1, 2, 3, 2)), rng.uniform(0.5, 2, (1, 2, 3, 2))
    x = attach(Moments(mean, var), maps)
    m, v = dense(x.spatial)  # [1, 2, 5, 4]
    np.testing.assert_allclose(x.mean.reshape(-1), m.mean(axis=(2, 3)).reshape(-1))
    np.testing.assert_allclose(x.var.reshape(-1), (v.mean(axis=(2, 3)) + m.var(axis=(2, 3)))
                               .reshape(-1))
    assert positions(x, (8, 2, 5, 4)) is x.spatial


def test_joint_classes_reproduce_both_operands():
    a = (np.array([0, 1, 1, 2]),)
    b = (np.array([0, 0, 1, 1]),)
    maps, sel = joint([a, b], (4,))
    for i in range(4):
        assert sel[0][0][maps[0][i]] == a[0][i] and sel[1][0][maps[0][i]] == b[0][i]


def test_one_tap_per_class_gather_is_the_general_gather_with_its_layout():
    """gather_taps' copy for a 1x1 window without padding equals the general gather in values,
    shape and memory layout (the leading axes fastest, as numpy's gather leaves them: a Conv's
    matrix product reads that layout, and another one sums in another order)."""
    rng = np.random.default_rng(0)
    for shape, n in [((16, 3, 3), 2), ((4, 16, 5, 5), 2), ((16, 7), 1), ((2, 3, 4, 4, 4), 3),
                     ((5, 1, 1), 2), ((3, 3), 2)]:
        a = rng.normal(size=shape)
        taps = [np.arange(k).reshape(k, 1) for k in shape[len(shape) - n:]]
        for arr in (a, np.broadcast_to(a[:1], shape)):
            fast = spatial.gather_taps(arr, taps)
            general = class_gather._gathered(arr, taps, 0.0)
            assert fast.shape == general.shape and fast.strides == general.strides
            np.testing.assert_array_equal(fast, general)
            assert fast.flags.writeable and not np.shares_memory(fast, a)
