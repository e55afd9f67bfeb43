"""Window geometry for the backward pass of Conv and the pools: which output position each
tap of each input position receives its gradient from.

Output index q reads input index ``p = q*stride - begin + t*dilation`` along each spatial axis,
so input p receives the gradient of output ``q = (p + begin - t*dilation) / stride`` through
tap t when that is an integer in ``[0, out)``.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np


def receiving(in_size: int, out_size: int, kernel: int, stride: int, dilation: int,
              begin: int) -> np.ndarray:
    """``[kernel, in_size]``: the output index each input index receives through each tap, -1
    where none."""
    p = np.arange(in_size)[None, :]
    num = p + begin - np.arange(kernel)[:, None] * dilation
    q = num // stride
    ok = (num % stride == 0) & (q >= 0) & (q < out_size)
    return np.where(ok, q, -1)


def tap_weighted_map(weights: np.ndarray, profile: np.ndarray, in_sizes, kernel, strides,
                     dilations, begins) -> np.ndarray:
    """``[C, prod in_sizes]``: ``sum_t weights[c, t] m_t(p)``, where ``m_t(p)`` is the output
    ``profile`` value input position p receives through tap t (0 where the tap reaches no
    output); taps in C order. One tap's map is held at a time."""
    per_axis = [receiving(n, o, k, s, d, b) for n, o, k, s, d, b in
                zip(in_sizes, profile.shape, kernel, strides, dilations, begins)]
    padded = np.pad(profile, [(0, 1)] * profile.ndim)  # index -1 reads the pad: 0
    total = np.zeros((weights.shape[0], int(np.prod(in_sizes))))
    for tap, taps in enumerate(itertools.product(*(range(k) for k in kernel))):
        index = np.ix_(*(axis[t] for axis, t in zip(per_axis, taps)))
        total += np.multiply.outer(weights[:, tap], padded[index].reshape(-1))
    return total


def reach_patterns(in_sizes, out_sizes, kernel, strides, dilations,
                   begins) -> tuple[np.ndarray, list[np.ndarray]]:
    """``(patterns [T, P], axis_ids)``: the sets of taps (as 0/1 columns, taps in C order)
    through which an input position receives some output's gradient, and per spatial axis the
    index of each coordinate's set along it. A position's set is the product of its axes' sets,
    pattern ``ravel_multi_index((ids_0[i_0], ids_1[i_1], ...))``, so they are found per axis:
    the cost grows with the axes' lengths, not with the map's size."""
    axis_patterns, axis_ids = [], []
    for n, o, k, s, d, b in zip(in_sizes, out_sizes, kernel, strides, dilations, begins):
        reached = (receiving(n, o, k, s, d, b) >= 0).T  # [n, k]
        patterns, ids = np.unique(reached, axis=0, return_inverse=True)
        axis_patterns.append(patterns.astype(np.float64))
        axis_ids.append(ids.reshape(-1))
    combined = [functools.reduce(np.multiply.outer, [axis_patterns[a][c]
                                                      for a, c in enumerate(combo)]).reshape(-1)
                for combo in itertools.product(*(range(len(p)) for p in axis_patterns))]
    return np.stack(combined, axis=1), axis_ids


def pattern_weights(axis_ids: list[np.ndarray]) -> np.ndarray:
    """``[P]``: the fraction of the map's positions with each set of :func:`reach_patterns`."""
    weights = np.ones(())
    for ids in axis_ids:
        weights = np.multiply.outer(weights, np.bincount(ids) / ids.size)
    return weights.reshape(-1)


def pattern_of_positions(axis_ids: list[np.ndarray]) -> np.ndarray:
    """``[prod in_sizes]``: each position's set of :func:`reach_patterns`, C order."""
    sizes = [int(ids.max()) + 1 for ids in axis_ids]
    return np.ravel_multi_index(np.ix_(*axis_ids), sizes).reshape(-1)


def tap_counts(in_sizes, out_sizes, kernel, strides, dilations, begins) -> np.ndarray:
    """``[T]``: for each tap, how many (input, output) position pairs it connects."""
    counts = np.ones(())
    for n, o, k, s, d, b in zip(in_sizes, out_sizes, kernel, strides, dilations, begins):
        counts = np.multiply.outer(counts, (receiving(n, o, k, s, d, b) >= 0).sum(axis=1))
    return counts.reshape(-1)
