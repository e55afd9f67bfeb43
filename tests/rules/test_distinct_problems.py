"""The max pools' correlated maxima solve each distinct problem once (equal taps and
correlation, bit for bit) and copy the answers: the same bits as solving every problem, with
the taps multiplied in the chunks the whole set of problems takes; and the columns found
equal are equal, never merely close."""

from __future__ import annotations

import numpy as np
import pytest

from onnxinit.rules import maxima
from onnxinit.rules.distinct_columns import distinct_columns


def _problems(taps, problems, repeats, seed=0):
    """Random taps ``[T, *P]`` and rho ``[*P]`` in which ``repeats`` problems copy others."""
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal((taps, *problems)) * 2
    std = np.abs(rng.standard_normal((taps, *problems))) + 0.1
    std[rng.random(std.shape) < 0.1] = 0.0  # constant taps (padding)
    count = rng.integers(0, 3, (taps, *problems)).astype(float)
    count[0] = np.maximum(count[0], 1)
    rho = rng.uniform(0.05, 0.6, problems)
    flat = [a.reshape(a.shape[0], -1) for a in (mean, std, count)] + [rho.reshape(1, -1)]
    n = flat[0].shape[1]
    source, target = rng.integers(0, n, repeats), rng.integers(0, n, repeats)
    for a in flat:
        a[:, target] = a[:, source]
    return mean, std, count, rho


@pytest.mark.parametrize("taps, problems, repeats, chunk", [
    (9, (1, 6, 5, 5), 60, maxima._CHUNK), (4, (1, 3, 8, 8), 150, maxima._CHUNK),
    (9, (1, 4, 6, 6), 50, 49 * 8 * 144 * 3)])  # the last: chunks of 3 taps
def test_distinct_problems_give_the_same_bits(monkeypatch, taps, problems, repeats, chunk):
    mean, std, count, rho = _problems(taps, problems, repeats)
    fn = np.tanh
    monkeypatch.setattr(maxima, "_CHUNK", chunk)
    assert maxima._distinct_problems(mean, std, count, rho, fn) is not None
    deduplicated = maxima.max_of_correlated_gaussians(mean, std, count, fn, rho)
    monkeypatch.setattr(maxima, "_DISTINCT_SHARE", 0.0)  # every problem solved
    assert maxima._distinct_problems(mean, std, count, rho, fn) is None
    whole = maxima.max_of_correlated_gaussians(mean, std, count, fn, rho)
    for a, b in zip(whole, deduplicated):
        assert a.shape == b.shape
        assert a.tobytes() == b.tobytes()


def test_per_channel_constants_keep_every_problem():
    """f with a per-channel scale: equal taps in two channels are two problems."""
    mean, std, count, rho = _problems(9, (1, 3, 4, 4), 20)
    scale = np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
    assert maxima._distinct_problems(mean, std, count, rho, lambda x: scale * x) is None


def test_distinct_columns_against_numpy_unique():
    rng = np.random.default_rng(1)
    columns = rng.integers(0, 3, (5, 400)).astype(float)  # many equal columns
    columns[0, :7] = [0.0, -0.0, np.inf, -np.inf, np.nan, np.nan, 1.0]
    first, inverse = distinct_columns(columns)
    assert np.array_equal(columns[:, first][:, inverse].view(np.int64),
                          columns.view(np.int64))
    bits = columns.view(np.int64)
    expected = np.unique(bits, axis=1)  # the distinct columns, bit for bit (NaN: one bit pattern)
    assert first.size == expected.shape[1]
    assert np.unique(bits[:, first], axis=1).shape[1] == first.size  # no group twice


def test_distinct_columns_declines_when_nearly_all_differ():
    columns = np.random.default_rng(2).standard_normal((3, 100))
    assert distinct_columns(columns) is None
    columns[:, 1] = columns[:, 0]
    assert distinct_columns(columns, 0.9) is None
    assert distinct_columns(columns)[0].size == 99


@pytest.mark.parametrize("plain", [False, True])
@pytest.mark.parametrize("chunk, block", [(maxima._CHUNK, maxima._BLOCK), (49 * 100 * 3, 1 << 12),
                                          (49 * 100 * 4, 1 << 40), (49 * 100 * 1, 49 * 3)])
def test_absent_taps_left_out_give_the_same_bits(monkeypatch, chunk, block, plain):
    """Problems sorted by their absent taps (count 0: padding), each block leaving out the
    taps absent from all its problems: the bits of multiplying every tap's CDF of 1, with
    chunks of one, three and four taps and blocks of every width; ``plain``: no constant tap
    and no count above 1 (their sorted copies are not made)."""
    rng = np.random.default_rng(3)
    taps, problems = 9, (1, 4, 5, 5)
    mean = rng.standard_normal((taps, *problems))
    std = np.abs(rng.standard_normal((taps, *problems))) + 0.1
    std[rng.random(std.shape) < 0.1] = 0.0
    count = np.ones((taps, *problems))
    count[rng.random(count.shape) < 0.1] = 2.0
    count[:3, ..., 0, :] = 0.0  # a border row of positions misses three taps
    count[6:, ..., :, -1] = 0.0
    count[4, ..., 2, 2] = 0.0
    if plain:
        std = np.maximum(std, 0.1)
        count = np.minimum(count, 1.0)
    monkeypatch.setattr(maxima, "_CHUNK", chunk)
    monkeypatch.setattr(maxima, "_BLOCK", block)
    left_out = maxima.max_of_gaussians(mean, std, count, np.tanh)
    monkeypatch.setattr(maxima, "_LEAVE_OUT_ABSENT", False)  # every tap multiplied, unsorted
    every = maxima.max_of_gaussians(mean, std, count, np.tanh)
    for a, b in zip(every, left_out):
        assert a.tobytes() == b.tobytes()


def test_pattern_order_is_the_binary_number_of_present_taps():
    """Problems sorted by ``sum_t present[t] 2^t`` (Python integers: any number of taps),
    equal patterns in their order."""
    rng = np.random.default_rng(5)
    for taps in (1, 8, 9, 62, 63, 100, 343):
        present = rng.random((taps, 300)) < 0.6
        present[:, 100:200] = present[:, :1]  # ties
        keys = [sum(int(b) << t for t, b in enumerate(present[:, j])) for j in range(300)]
        expected = sorted(range(300), key=keys.__getitem__)
        assert maxima._pattern_order(present).tolist() == expected


def test_windows_of_many_taps_leave_absent_taps_out(monkeypatch):
    """A 7x7x7 window (343 taps) on a 2x4x4 map: each problem has at most 32 present taps;
    the CDFs evaluated are at most a block's present taps (not all 343 of every block), and
    the bits are those of multiplying every tap's CDF of 1."""
    rng = np.random.default_rng(6)
    taps, problems = 343, (1, 6, 2, 4, 4)
    offsets = np.stack(np.meshgrid(*[np.arange(-3, 4)] * 3, indexing="ij")).reshape(3, -1)
    position = np.stack(np.meshgrid(np.arange(2), np.arange(4), np.arange(4), indexing="ij"))
    at = position.reshape(3, 1, -1) + offsets[:, :, None]
    inside = np.all((at >= 0) & (at < np.array([2, 4, 4])[:, None, None]), axis=0)  # [T, 32]
    count = np.broadcast_to(inside.reshape(taps, 1, 1, 2, 4, 4), (taps, *problems)) * 1.0
    mean = rng.standard_normal((taps, *problems))
    std = np.abs(rng.standard_normal((taps, *problems))) + 0.1
    evaluated = []
    original = maxima._cdf_block

    def counted(acc, grid, taps_, chunks, *rest):
        evaluated.append(sum(len(range(taps)[c]) if isinstance(c, slice) else c.size
                             for c in chunks) * acc.shape[1])
        return original(acc, grid, taps_, chunks, *rest)

    monkeypatch.setattr(maxima, "_cdf_block", counted)
    monkeypatch.setattr(maxima, "_BLOCK", 49 * 2 * 16)
    left_out = maxima.max_of_gaussians(mean, std, count, np.tanh)
    assert sum(evaluated) <= 2 * int(inside.sum()) * 6  # blocks of 2 columns, 2 patterns at most
    monkeypatch.setattr(maxima, "_LEAVE_OUT_ABSENT", False)
    every = maxima.max_of_gaussians(mean, std, count, np.tanh)
    for a, b in zip(every, left_out):
        assert a.tobytes() == b.tobytes()
