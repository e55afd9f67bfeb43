"""onnxinit.correlation's building blocks and the correlated maximum, against brute force and
Monte Carlo."""

from __future__ import annotations

import numpy as np

from onnxinit import correlation, mehler
from onnxinit.rules.maxima import max_of_correlated_gaussians


def test_relu_hermite_amplitudes_match_numerical_integration():
    # a_n = E[relu(m + s z) He_n(z)], integrated on a fine grid
    z = np.linspace(-12, 12, 200_001)
    density = np.exp(-0.5 * z**2) / np.sqrt(2 * np.pi) * (z[1] - z[0])
    he = [np.ones_like(z), z]
    for k in range(1, 8):
        he.append(z * he[-1] - k * he[-2])
    for m, s in [(0.3, 1.2), (-1.0, 0.5), (0.0, 2.0)]:
        f = np.maximum(m + s * z, 0)
        expected = [(f * he[n] * density).sum() for n in range(1, 9)]
        got = mehler.leaky_hermite_amplitudes(0.0, m, s)
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_a_constant_channel_has_zero_amplitudes_not_nan():
    # a channel with zero weights and zero bias (IDInit's padded patterns): mean 0, std 0
    amp = mehler.leaky_hermite_amplitudes(0.0, np.array([0.0, 1.0, -1.0]), np.zeros(3))
    assert np.all(np.isfinite(amp)) and np.all(amp == 0)


def test_window_pairs_are_the_correlations_at_the_tap_offsets():
    rng = np.random.default_rng(0)
    rho = rng.uniform(-1, 1, (2, 7, 7))
    corr = correlation.Correlation(rho, np.array([0.1, -0.2]))
    pairs = correlation.window_pairs(corr, [2, 3], [1, 2])
    taps = list(np.ndindex(2, 3))
    expected = []
    for i, t in enumerate(taps):
        for u in taps[i + 1:]:
            d = (u[0] - t[0], 2 * (u[1] - t[1]))
            inside = all(abs(x) <= 3 for x in d)
            expected.append(rho[:, 3 + d[0], 3 + d[1]] if inside else corr.floor)
    np.testing.assert_allclose(pairs, np.stack(expected, axis=1))


def test_max_of_equicorrelated_gaussians_matches_monte_carlo():
    rng = np.random.default_rng(1)
    means = np.array([0.3, -0.2, 0.0, 0.5])[:, None]
    stds = np.array([1.0, 0.7, 1.3, 0.9])[:, None]
    for r in (0.0, 0.4, 0.8):
        cov = r * np.outer(stds, stds) + np.diag((1 - r) * stds[:, 0] ** 2)
        z = rng.multivariate_normal(means[:, 0], cov, size=1_000_000)
        f = np.maximum(z.max(axis=1), 0)
        e, v, _ = max_of_correlated_gaussians(means, stds, np.ones((4, 1)),
                                              lambda t: np.maximum(t, 0), np.array([r]))
        assert abs(e[0] - f.mean()) < 0.005 * f.std() + 2e-3
        assert abs(v[0] / f.var() - 1) < 0.01
