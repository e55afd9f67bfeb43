"""ReLU of a Gaussian mixture (rules/rectified.py) against numpy Monte Carlo (float64, seeded):
the output's point mass at 0, mean and variance, and the next residual ReLU's moments, which
read the shape of the law and not only its moments."""

from __future__ import annotations

import numpy as np
import pytest

from onnxinit.rules.rectified import MAX_COMPONENTS, relu_mixture

SAMPLES = 400_000


def _mixture(rng, k: int, channels: int = 4):
    w = rng.random((k, 1, channels))
    return w / w.sum(axis=0), rng.normal(0.0, 1.5, (k, 1, channels)), rng.random((k, 1, channels))


def _draw(mixture, rng) -> np.ndarray:
    """[SAMPLES, channels] samples of the mixture."""
    w, m, v = (a[:, 0] for a in mixture)
    out = np.empty((SAMPLES, w.shape[1]))
    for c in range(w.shape[1]):
        k = rng.choice(w.shape[0], p=w[:, c], size=SAMPLES)
        out[:, c] = m[k, c] + np.sqrt(v[k, c]) * rng.standard_normal(SAMPLES)
    return out


def _moments(mixture):
    w, m, v = mixture
    mean = (w * m).sum(axis=0)
    return mean.ravel(), ((w * (v + m * m)).sum(axis=0) - mean**2).ravel()


@pytest.mark.parametrize("k", [3, 12])
def test_relu_of_a_mixture_keeps_its_zero_and_moments(k):
    rng = np.random.default_rng(k)
    mixture = _mixture(rng, k)
    out = relu_mixture(mixture)
    assert out[0].shape[0] == min(k + 1, MAX_COMPONENTS)
    y = np.maximum(_draw(mixture, rng), 0.0)
    mean, var = _moments(out)
    np.testing.assert_allclose(out[0][0].ravel(), (y == 0).mean(axis=0), atol=3e-3)
    np.testing.assert_allclose(mean, y.mean(axis=0), rtol=1e-2)
    np.testing.assert_allclose(var, y.var(axis=0), rtol=1e-2)


def test_next_residual_relu_sees_the_point_mass():
    """ReLU(ReLU(x) + b): the second ReLU's variance from the kept mixture within 2% of Monte
    Carlo (each positive part as one Gaussian); one Gaussian per component (the first ReLU's
    moments, as before) is up to 7.5% low here."""
    rng = np.random.default_rng(7)
    mixture = _mixture(rng, 4)
    shift, spread = 0.3, 0.25  # b ~ N(0.3, 0.25)
    z = np.maximum(np.maximum(_draw(mixture, rng), 0.0)
                   + shift + np.sqrt(spread) * rng.standard_normal((SAMPLES, 1)), 0.0)
    w, m, v = relu_mixture(mixture)
    _, var = _moments(relu_mixture((w, m + shift, v + spread)))
    np.testing.assert_allclose(var, z.var(axis=0), rtol=2.5e-2)
