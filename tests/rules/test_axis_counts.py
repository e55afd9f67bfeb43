"""pool_pairs._axis_counts, kept per geometry: its counts against a loop over the output
positions, and the kept array read-only (a caller cannot change what the next conv reads)."""

from __future__ import annotations

import numpy as np
import pytest

from onnxinit.rules.pool_pairs import _axis_counts


def _loop(n_in, n_out, stride, dilation, begin, k, radius):
    out = np.zeros((2 * radius + 1, k, k))
    for i, d in enumerate(range(-radius, radius + 1)):
        for o in range(n_out):
            if not 0 <= o + d < n_out:
                continue
            for t in range(k):
                u = o * stride - begin + t * dilation
                if not 0 <= u < n_in:
                    continue
                for t2 in range(k):
                    if u == (o + d) * stride - begin + t2 * dilation:
                        out[i, t, t2] += 1
    return out


@pytest.mark.parametrize("geometry", [(7, 7, 1, 1, 1, 3, 2), (14, 7, 2, 1, 1, 3, 1),
                                      (9, 5, 2, 2, 2, 3, 3), (5, 5, 1, 1, 2, 5, 4),
                                      (12, 4, 3, 1, 0, 3, 1)])
def test_axis_counts_against_a_loop_and_kept_read_only(geometry):
    got = _axis_counts(*geometry)
    np.testing.assert_array_equal(got, _loop(*geometry))
    assert not got.flags.writeable
    with pytest.raises(ValueError):
        got[0, 0, 0] = 99.0
    np.testing.assert_array_equal(_axis_counts(*geometry), _loop(*geometry))
