"""``integer_power`` against numpy's ``power`` (the C library's pow): same values to a few ulp,
same special values, shapes and dtypes."""

from __future__ import annotations

import numpy as np
import pytest

from onnxinit.rules.powers import MAX_EXPONENT, integer_power


@pytest.mark.parametrize("exponent", range(MAX_EXPONENT + 1))
def test_matches_pow_to_a_few_ulp(exponent):
    rng = np.random.default_rng(exponent)
    x = rng.standard_normal(10_000) * rng.choice([1e-3, 1.0, 30.0], 10_000)
    want = np.power(x, np.float64(exponent))
    got = integer_power(x, np.array(exponent, np.float64))
    # each multiplication rounds by half an ulp, and each squaring doubles the error before it
    assert np.all(np.abs(got - want) <= 8 * np.spacing(np.abs(want))), exponent


def test_special_values_are_pows():
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e200, -1e200, 1e-200, -2.0])
    for exponent in range(MAX_EXPONENT + 1):
        with np.errstate(over="ignore", under="ignore"):
            want = np.power(x, float(exponent))
            got = integer_power(x, exponent)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        finite = ~np.isnan(want)
        np.testing.assert_array_equal(np.signbit(got[finite] * (got[finite] != 0)),
                                      np.signbit(want[finite] * (want[finite] != 0)))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want))


def test_broadcasts_like_pow_and_returns_a_new_array():
    x = np.arange(6.0).reshape(2, 3)
    c = np.full((4, 1, 1), 3.0)  # a constant laid out at a higher rank
    got = integer_power(x, c)
    assert got.shape == np.power(x, c).shape == (4, 2, 3)
    np.testing.assert_allclose(got, np.power(x, c), rtol=1e-15)
    one = integer_power(x, 1)
    assert one is not x and np.shares_memory(one, x) is False
    np.testing.assert_array_equal(one, x)
    assert integer_power(x, 0).shape == (2, 3) and np.all(integer_power(x, 0) == 1)
    assert integer_power(x.astype(np.float32), np.float64(2)).dtype == np.power(
        x.astype(np.float32), np.array(2.0)).dtype


@pytest.mark.parametrize("c", [np.array([2.0, 3.0]), 2.5, 9, -1])
def test_other_exponents_go_to_pow(c):
    x = np.linspace(0.5, 3.0, 8).reshape(4, 2)
    np.testing.assert_array_equal(integer_power(x, c), np.power(x, c))


def test_gaussian_power_closed_form_matches_numpy_float64_sampling():
    from onnxinit.rules.powers import gaussian_power

    rng = np.random.default_rng(3)
    mu = rng.normal(size=6) * 2
    var = rng.uniform(0.05, 3.0, size=6)
    z = rng.standard_normal((2_000_000, 1)) * np.sqrt(var) + mu
    for n in (2, 3):
        mean, v = gaussian_power(n)(mu, var)
        np.testing.assert_allclose(mean, (z**n).mean(axis=0), atol=0.01 * np.sqrt(v).max())
        np.testing.assert_allclose(v, (z**n).var(axis=0), rtol=0.02)
    assert gaussian_power(4) is None and gaussian_power(np.array([2.0, 3.0])) is None
