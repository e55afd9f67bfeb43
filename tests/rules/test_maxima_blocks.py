"""max_of_gaussians evaluates the taps' CDFs per block of problems that stays in cache: the
blocks are a schedule, not an approximation, so any block size gives the same bits (checked
here against one block holding every problem), and the result matches a direct quadrature of
the maximum's law."""

from __future__ import annotations

import numpy as np
import pytest

from onnxinit.rules import maxima


@pytest.mark.parametrize("taps, problems, top", [(9, (2, 1, 5, 4, 4), 1), (4, (3,), 3),
                                                  (9, (1, 1, 7, 3, 3), 100)])
def test_blocks_give_the_same_bits(monkeypatch, taps, problems, top):
    rng = np.random.default_rng(0)
    mean = rng.standard_normal((taps, *problems)) * 2
    std = np.abs(rng.standard_normal((taps, *problems))) + 0.1
    std[rng.random(std.shape) < 0.2] = 0.0  # constant taps (padding)
    count = rng.integers(0, top + 1, (taps, *problems)).astype(float)
    count[0] = np.maximum(count[0], 1)
    fn = np.tanh
    monkeypatch.setattr(maxima, "_BLOCK", 1 << 40)
    monkeypatch.setattr(maxima, "_ROWS", 1 << 40)
    whole = maxima.max_of_gaussians(mean, std, count, fn)
    monkeypatch.setattr(maxima, "_BLOCK", 64)  # one problem (or a few) per block
    monkeypatch.setattr(maxima, "_ROWS", 1)  # f on one grid row at a time
    blocked = maxima.max_of_gaussians(mean, std, count, fn)
    for a, b in zip(whole, blocked):
        assert a.tobytes() == b.tobytes()


def test_maximum_of_two_gaussians_matches_quadrature():
    """E and Var of max(z1, z2), z_i ~ N(m_i, s_i^2) independent, against a fine Riemann sum
    of the maximum's density d/dx [Phi1 Phi2]."""
    from scipy.stats import norm

    m, s = np.array([[0.3], [-0.5]]), np.array([[1.0], [2.0]])
    e, var, _ = maxima.max_of_gaussians(m, s, np.ones((2, 1)), lambda x: x)
    x = np.linspace(-20, 20, 400001)
    cdf = norm.cdf(x, m[0, 0], s[0, 0]) * norm.cdf(x, m[1, 0], s[1, 0])
    density = np.gradient(cdf, x)
    mean = np.trapezoid(x * density, x)
    second = np.trapezoid(x * x * density, x)
    assert e[0] == pytest.approx(mean, rel=2e-3)
    assert var[0] == pytest.approx(second - mean**2, rel=2e-2)
