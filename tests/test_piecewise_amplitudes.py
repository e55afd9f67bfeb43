"""``mehler.piecewise_hermite_amplitudes`` (closed form for piecewise polynomials of degree
<= 2: HardSwish, HardSigmoid, Clip, Shrink, ThresholdedRelu) against
``E[f(m + s z) He_n(z)]`` integrated by adaptive quadrature (scipy.integrate.quad) split at the
pieces' bounds, and the activations' rules handing their pieces to the correlation path."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from scipy import integrate
from scipy.special import eval_hermitenorm

from onnxinit import mehler
from onnxinit.rules import correlations
from onnxinit.rules.activations import _HARD_SWISH


def _oracle(pieces, m: float, s: float) -> np.ndarray:
    """a_n, n = 1..8, by scipy's adaptive quadrature on each piece, in z, over the part of
    [(lo - m)/s, (hi - m)/s] within +-40, split at 0 and +-8 so that no subinterval misses
    the density's peak."""
    out = np.zeros(8)
    for lo, hi, (c0, c1, c2) in pieces:
        a, b = max((lo - m) / s, -40.0), min((hi - m) / s, 40.0)
        if a >= b:
            continue
        edges = [a] + [t for t in (-8.0, 0.0, 8.0) if a < t < b] + [b]
        for n in range(1, 9):
            def integrand(z, n=n):
                x = m + s * z
                return ((c0 + c1 * x + c2 * x * x) * eval_hermitenorm(n, z)
                        * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi))
            out[n - 1] += sum(integrate.quad(integrand, u, v, epsabs=1e-14, epsrel=1e-12,
                                             limit=200)[0] for u, v in zip(edges, edges[1:]))
    return out


_HARD_SIGMOID = [(-np.inf, -2.5, (0.0, 0.0, 0.0)), (-2.5, 2.5, (0.5, 0.2, 0.0)),
                 (2.5, np.inf, (1.0, 0.0, 0.0))]
_CLIP = [(-np.inf, -1.0, (-1.0, 0.0, 0.0)), (-1.0, 6.0, (0.0, 1.0, 0.0)),
         (6.0, np.inf, (6.0, 0.0, 0.0))]
_SHRINK = [(-np.inf, -0.5, (0.25, 1.0, 0.0)), (-0.5, 0.5, (0.0, 0.0, 0.0)),
           (0.5, np.inf, (-0.25, 1.0, 0.0))]  # jumps at +-0.5
_THRESHOLDED = [(-np.inf, 1.0, (0.0, 0.0, 0.0)), (1.0, np.inf, (0.0, 1.0, 0.0))]


@pytest.mark.parametrize("pieces", [_HARD_SWISH, _HARD_SIGMOID, _CLIP, _SHRINK, _THRESHOLDED],
                         ids=["hardswish", "hardsigmoid", "clip", "shrink", "thresholded"])
def test_matches_adaptive_quadrature(pieces):
    cases = [(0.0, 1.0), (0.3, 1.2), (-2.0, 3.0), (2.9, 0.05), (-4.5, 0.2), (12.0, 2.0),
             (0.0, 25.0), (-0.5, 1e-3)]
    mean = np.array([m for m, _ in cases])
    std = np.array([s for _, s in cases])
    got = mehler.piecewise_hermite_amplitudes(pieces, mean, std)
    assert got.shape == (8, len(cases))
    for i, (m, s) in enumerate(cases):
        expected = _oracle(pieces, m, s)
        # 1e-8 of the largest amplitude (the oracle's own accuracy), or 1e-10 of the input's
        # std where every amplitude is far below it: a distribution far from every kink
        # (a_n ~ phi(kink), below 1e-50: the oracle's terms cancel to its rounding there)
        np.testing.assert_allclose(got[:, i], expected, rtol=0,
                                   atol=max(1e-8 * np.abs(expected).max(), 1e-10 * s),
                                   err_msg=f"mean {m} std {s}")


def test_point_mass_and_broadcasting():
    mean = np.array([[0.0, 1.0, -3.0]])
    std = np.array([[0.0], [1.0]])
    got = mehler.piecewise_hermite_amplitudes(_HARD_SWISH, mean, std)
    assert got.shape == (8, 2, 3)
    assert np.all(got[:, 0] == 0.0)  # a constant input: every amplitude 0
    for j, m in enumerate(mean[0]):
        expected = _oracle(_HARD_SWISH, m, 1.0)
        np.testing.assert_allclose(got[:, 1, j], expected, atol=1e-12)


@pytest.mark.parametrize("op, attrs, kinks", [
    ("HardSwish", {}, (-3.0, 3.0)), ("HardSigmoid", {"alpha": 0.25}, (-2.0, 2.0)),
    ("Shrink", {"bias": 0.1, "lambd": 0.4}, (-0.4, 0.4)),
    ("ThresholdedRelu", {"alpha": 0.7}, (0.7,))])
def test_rules_hand_their_pieces_to_the_correlation(op, attrs, kinks, monkeypatch):
    """The Elementwise built by each rule carries its pieces, and the correlation's
    amplitudes then take the closed form (never the composite quadrature)."""
    from onnxinit.rules.context import RuleContext
    from onnxinit.rules.elementwise import UNARY

    node = helper.make_node(op, ["x"], ["y"], **attrs)
    ctx = RuleContext(node, "n", None, None)
    f = UNARY[op](ctx, 4).elementwise
    assert f.pieces is not None

    def refuse(*args):
        raise AssertionError("quadrature used for a piecewise polynomial")

    monkeypatch.setattr(mehler, "hermite_amplitudes", refuse)
    mean, var = np.array([[0.2, -1.0]]), np.array([[1.5, 0.3]])
    got = correlations._amplitudes((f,), mean, var, smooth=False)
    for j in range(2):
        m, s = mean[0, j], np.sqrt(var[0, j])
        expected = np.zeros(8)
        for n in range(1, 9):
            def integrand(z, n=n):
                return (f.fn(np.float64(m + s * z)) * eval_hermitenorm(n, z)
                        * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi))
            edges = sorted({(t - m) / s for t in kinks} | {-14.0, 14.0})
            expected[n - 1] = sum(integrate.quad(integrand, a, b, epsabs=1e-13,
                                                 epsrel=1e-11, limit=200)[0]
                                  for a, b in zip(edges, edges[1:]))
        np.testing.assert_allclose(got[:, 0, j], expected, atol=1e-7 * np.abs(expected).max())
