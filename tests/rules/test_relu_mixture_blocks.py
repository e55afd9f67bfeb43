"""rectified.relu_mixture works in blocks of elements (a schedule: any block size gives the
same bits), and its merge of sorted components equals a plain per-element reference written
from the docstring (sort by mean, group by the cumulative weight's midpoint, moment-match)."""

from __future__ import annotations

import numpy as np
import pytest

from onnxinit.rules import rectified


def _mixture(rng, components: int, cells: tuple):
    w = rng.random((components, *cells))
    w /= w.sum(axis=0, keepdims=True)
    return w, rng.standard_normal((components, *cells)) * 2, rng.random((components, *cells))


def test_blocks_give_the_same_bits(monkeypatch):
    w, m, v = _mixture(np.random.default_rng(0), 8, (1, 6, 5, 7))
    v[:, 0, 0] = 0.0  # points
    monkeypatch.setattr(rectified, "_BLOCK", 1 << 40)
    whole = rectified.relu_mixture((w, m, v))
    monkeypatch.setattr(rectified, "_BLOCK", 16)
    blocked = rectified.relu_mixture((w, m, v))
    for a, b in zip(whole, blocked):
        assert a.shape == (rectified.MAX_COMPONENTS, 1, 6, 5, 7)
        assert a.tobytes() == b.tobytes()


def _merge_reference(w, m, v, most):
    out = np.zeros((3, most) + w.shape[1:])
    for index in np.ndindex(w.shape[1:]):
        cw, cm, cv = (a[(slice(None),) + index] for a in (w, m, v))
        order = np.argsort(cm, kind="stable")
        cw, cm, cv = cw[order], cm[order], cv[order]
        mid = (np.cumsum(cw) - cw / 2) / cw.sum()
        group = np.minimum((mid * most).astype(int), most - 1)
        for g in range(most):
            inside = group == g
            weight = cw[inside].sum()
            if weight > 0:
                mean = (cw * cm)[inside].sum() / weight
                second = (cw * (cv + cm * cm))[inside].sum() / weight
                out[(slice(None), g) + index] = weight, mean, max(second - mean * mean, 0.0)
    return out


@pytest.mark.parametrize("components, most", [(24, 7), (9, 4), (5, 7)])
def test_merge_matches_a_per_element_reference(components, most):
    w, m, v = _mixture(np.random.default_rng(1), components, (3, 4))
    merged = rectified.merge(w, m, v, most)
    if components <= most:
        assert merged[0] is w
        return
    np.testing.assert_allclose(np.stack(merged), _merge_reference(w, m, v, most),
                               rtol=1e-12, atol=1e-14)
