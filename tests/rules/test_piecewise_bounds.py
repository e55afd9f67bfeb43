"""The pieces of a piecewise polynomial share their bounds' values (``mehler.bound_key``): a
piece's upper bound is the next one's lower, computed once. The moments
(``rules.gaussian.piecewise_closed``) and Hermite amplitudes
(``mehler.piecewise_hermite_amplitudes``) are the same bits as with every bound computed
apart, and match a fine grid."""

from __future__ import annotations

import numpy as np
import pytest

from onnxinit import mehler
from onnxinit.rules import gaussian

HARD_SWISH = [(-np.inf, -3.0, (0.0, 0.0, 0.0)), (-3.0, 3.0, (0.0, 0.5, 1 / 6)),
              (3.0, np.inf, (0.0, 1.0, 0.0))]
SIGNED_ZERO = [(-np.inf, -0.0, (1.0, -1.0, 0.0)), (0.0, 2.0, (1.0, 0.5, 0.25)),
               (2.0, np.inf, (3.0, 0.0, 0.0))]
CLIP_F32 = [(-np.inf, np.float32(-2.9999999), (np.float32(-2.9999999), 0.0, 0.0)),
            (np.float32(-2.9999999), np.float32(2.9999999), (0.0, 1.0, 0.0)),
            (np.float32(2.9999999), np.inf, (np.float32(2.9999999), 0.0, 0.0))]


def _cells(seed: int = 0):
    rng = np.random.default_rng(seed)
    mu = rng.normal(0, 3, (4, 37))
    var = rng.uniform(0, 9, (4, 37))
    mu[0, :6] = [0.0, -0.0, 3.0, -3.0, np.inf, np.nan]
    var[1, :4] = [0.0, 0.0, 1e-300, np.inf]
    var[2, :2] = [np.nan, 1e-12]
    return mu, var


def _apart(monkeypatch):
    monkeypatch.setattr(gaussian, "bound_key", lambda bound: None)
    monkeypatch.setattr(mehler, "bound_key", lambda bound: None)


@pytest.mark.parametrize("far", [False, True])
@pytest.mark.parametrize("pieces", [HARD_SWISH, SIGNED_ZERO, CLIP_F32])
def test_shared_bounds_give_the_same_bits(pieces, far, monkeypatch):
    """(``far``: every cell 50 sd beyond the bounds, where phi underflows at every bound)"""
    mu, var = _cells()
    if far:
        mu, var = np.full((3, 5), 50.0), np.ones((3, 5))
    with np.errstate(all="ignore"):
        shared = (gaussian.piecewise_closed(pieces, mu, var),
                  mehler.piecewise_hermite_amplitudes(pieces, mu, np.sqrt(var)))
        _apart(monkeypatch)
        apart = (gaussian.piecewise_closed(pieces, mu, var),
                 mehler.piecewise_hermite_amplitudes(pieces, mu, np.sqrt(var)))
    for a, b in zip((*shared[0], shared[1]), (*apart[0], apart[1])):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a.view(np.int64), b.view(np.int64))  # bits, -0 and NaN


def test_piecewise_closed_against_a_fine_grid():
    mu = np.array([-4.0, -1.0, 0.0, 0.5, 2.9, 5.0])
    var = np.array([0.5, 2.0, 1.0, 4.0, 0.25, 1.0])
    mean, variance = gaussian.piecewise_closed(HARD_SWISH, mu, var)
    z = np.linspace(-12.0, 12.0, 240_001)  # the trapezoid rule on a fine grid (kinks)
    w = np.exp(-0.5 * z * z) * (z[1] - z[0]) / np.sqrt(2 * np.pi)
    w[[0, -1]] *= 0.5
    x = mu[:, None] + np.sqrt(var)[:, None] * z
    f = x * np.clip(x + 3, 0, 6) / 6
    ef = f @ w
    np.testing.assert_allclose(mean, ef, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(variance, (f * f) @ w - ef**2, rtol=1e-5, atol=1e-9)


def _direct_terms(t, top):
    """He_j(t) phi(t), j < top, evaluated on the whole array (0 where t is infinite or phi
    underflows)."""
    phi = np.exp(-0.5 * np.where(np.isfinite(t), t, 0.0) ** 2) / np.sqrt(2 * np.pi)
    live = np.isfinite(t) & (phi > 0)
    phi = np.where(live, phi, 0.0)
    t = np.where(live, t, 0.0)
    he_prev, he, out = np.ones_like(t), t, [phi]
    for j in range(1, top):
        out.append(he * phi)
        he_prev, he = he, t * he - j * he_prev
    return out


def _direct_tails(t, k):
    finite = np.isfinite(t)
    z = np.where(finite, t, 0.0)
    return np.where(finite, z**k * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi), 0.0)


@pytest.mark.parametrize("t", [np.full((2, 3), -np.inf), np.full(4, np.inf),
                               np.full(3, np.nan), np.array([-60.0, 45.0, np.inf]),
                               np.array([-0.0, 0.0, 1.5, -2.0, np.nan, 39.0])])
def test_each_bounds_terms_as_evaluated_on_the_whole_array(t):
    """The bounds' terms (one value spread where no value is live) against the formula on
    every element: the same bits, zeros' signs included."""
    with np.errstate(all="ignore"):
        terms, (cdf, cdf_neg) = mehler._bound_terms(t, 10, None, None)
        tail, _ = gaussian._bound(t, None, None)
        for got, want in zip(terms, _direct_terms(t, 10)):
            assert got.shape == want.shape
            np.testing.assert_array_equal(got.view(np.int64), want.view(np.int64))
        for k in range(4):
            np.testing.assert_array_equal(tail(k).view(np.int64),
                                          _direct_tails(t, k).view(np.int64))
