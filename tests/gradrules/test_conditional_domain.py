"""The gradient's conditional (``onnxinit.gradrules.conditional``) over a law that reaches,
far in its tail, outside the function's domain: a Sqrt of a mean of squares plus eps."""

from __future__ import annotations

import numpy as np
import pytest

from onnxinit.gradrules.activations import derivative
from onnxinit.gradrules.conditional import truncated_expectation


def _sqrt_slope_squared(y):
    return derivative(np.sqrt)(y) ** 2


def test_nodes_past_zero_under_a_sqrt_are_dropped_when_improbable():
    """E[sqrt'(x)^2] = E[1 / (4 x)] over N(m, v) with m 5.4 deviations above 0 (Mamba's final
    RMSNorm: its mean square per token, 0.012-0.019 +- 0.0022-0.0036): the quadrature's nodes
    6 deviations out are negative, where sqrt' is NaN, and made the whole expectation NaN
    (`check` ended there with a non-finite gradient). They carry ~1e-8 of the probability."""
    m, s = 0.019, 0.019 / 5.44
    got = truncated_expectation(_sqrt_slope_squared, np.array(m), np.array(s * s))
    x = np.linspace(m - 5 * s, m + 9 * s, 400_001)  # float64 oracle, all of it above 0
    density = np.exp(-0.5 * ((x - m) / s) ** 2) / (np.sqrt(2 * np.pi) * s)
    expected = np.trapezoid(density / (4 * x), x)
    assert float(got) == pytest.approx(expected, rel=1e-4)


def test_a_law_mostly_outside_the_domain_stays_unpredicted():
    """Two deviations from 0, 2% of the law is negative: that is not a tail to drop; the
    expectation stays NaN, which the backward pass reports as an error naming the node."""
    got = truncated_expectation(_sqrt_slope_squared, np.array(1.0), np.array(0.25))
    assert np.isnan(got)
