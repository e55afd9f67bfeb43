"""The gradient's conditional (``onnxinit.gradrules.conditional``) over a law that reaches,
far in its tail, outside the function's domain: a Sqrt of a mean of squares plus eps."""

from __future__ import annotations

import numpy as np
import pytest

from onnxinit.gradrules.activations import derivative
from onnxinit.gradrules.conditional import NODES, Conditional, truncated_expectation


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


def test_a_conditional_read_outside_the_function_domain_is_undefined_not_an_index():
    """A table conditional read at the output of a Log whose input law reaches below 0
    (Keras' written-out reduce_logsumexp under `check`): the quadrature's nodes there give
    NaN, which the expectation drops when improbable. The table's lookup turned NaN into the
    index -2**63 (an internal IndexError in strict mode)."""
    table = Conditional(lo=np.array([0.0]), hi=np.array([2.0]),
                        table=np.linspace(1.0, 3.0, NODES)[:, None])
    got = table.smooth(np.log(np.array([[-1.0], [np.e]])))
    assert np.isnan(got[0, 0])
    assert got[1, 0] == pytest.approx(1.0 + 1.0, rel=1e-9)  # linear table: 1 + x at x = 1

    def slope_given(y):  # a Log's derivative times the conditional at its output
        with np.errstate(invalid="ignore", divide="ignore"):
            return table(np.log(y)) / y

    m, s = 2.0, 2.0 / 5.44  # nodes 6 deviations out are below 0: ~1e-8 of the law
    got = truncated_expectation(slope_given, np.array([m]), np.array([s * s]))
    x = np.linspace(m - 5 * s, m + 9 * s, 400_001)
    density = np.exp(-0.5 * ((x - m) / s) ** 2) / (np.sqrt(2 * np.pi) * s)
    expected = np.trapezoid(density * table.smooth(np.log(x)[:, None])[:, 0] / x, x)
    assert float(got[0]) == pytest.approx(expected, rel=1e-3)  # the table's kinks: 2e-4
