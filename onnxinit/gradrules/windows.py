"""Window geometry for the backward pass of Conv and the pools: which output position each
tap of each input position receives its gradient from.

Output index q reads input index ``p = q*stride - begin + t*dilation`` along each spatial axis,
so input p receives the gradient of output ``q = (p + begin - t*dilation) / stride`` through
tap t when that is an integer in ``[0, out)``.
"""

from __future__ import annotations

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


def tap_maps(profile: np.ndarray, in_sizes, kernel, strides, dilations, begins) -> np.ndarray:
    """``[T, *in_sizes]`` (T = prod kernel, taps in C order): the output ``profile`` value each
    input position receives through each tap, 0 where the tap reaches no output."""
    per_axis = [receiving(n, o, k, s, d, b) for n, o, k, s, d, b in
                zip(in_sizes, profile.shape, kernel, strides, dilations, begins)]
    padded = np.pad(profile, [(0, 1)] * profile.ndim)  # index -1 reads the pad: 0
    out = []
    for taps in itertools.product(*(range(k) for k in kernel)):
        index = np.ix_(*(axis[t] for axis, t in zip(per_axis, taps)))
        out.append(padded[index])
    return np.stack(out).reshape((len(out), *in_sizes))


def tap_counts(in_sizes, out_sizes, kernel, strides, dilations, begins) -> np.ndarray:
    """``[T]``: for each tap, how many (input, output) position pairs it connects."""
    counts = np.ones(())
    for n, o, k, s, d, b in zip(in_sizes, out_sizes, kernel, strides, dilations, begins):
        counts = np.multiply.outer(counts, (receiving(n, o, k, s, d, b) >= 0).sum(axis=1))
    return counts.reshape(-1)
