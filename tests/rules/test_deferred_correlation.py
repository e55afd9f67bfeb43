"""The spatial correlation of an element-wise function through a chain is computed when first
read (rules/correlations.deferred_correlation): a SiLU's Sigmoid, whose only reader is the
fused Mul (which integrates from the Sigmoid's input), never computes it; every prediction is
what computing it at once gives, and a correlation computed late is the one computed at once
(its amplitudes, which the smooth quadrature's last calls hold, are found when it is made)."""

from __future__ import annotations

import numpy as np

from onnxinit.deferred import DeferredCorrelation
from onnxinit.moments import Moments
from onnxinit.rules import correlations, elementwise

from ..oracle import predict
from .test_pool_pairs import _block


def _eager(monkeypatch):
    monkeypatch.setattr(elementwise, "deferred_correlation",
                        lambda *args: correlations.elementwise_correlation(*args))


def test_a_silu_s_sigmoid_correlation_is_not_computed_and_predictions_keep_their_bits(
        monkeypatch):
    x = {"x": Moments.scalar(0.0, 1.0)}
    model = _block((16, 8, 8, 8), seed=0)
    _, lazy = predict(model, x)
    for name in ("h_s", "a_s"):  # the Sigmoids of the two SiLUs ("a_s" with its pair terms)
        given = lazy.moments[name].spatial.given
        assert isinstance(given, DeferredCorrelation) and not given.computed, name
    _eager(monkeypatch)
    _, eager = predict(model, x)
    assert lazy.moments.keys() == eager.moments.keys()
    for name, m in eager.moments.items():
        got = lazy.moments[name]
        np.testing.assert_array_equal(got.mean, m.mean, err_msg=name)
        np.testing.assert_array_equal(got.var, m.var, err_msg=name)
    # read late (the quadrature's kept amplitudes long replaced), the same correlation
    for name in ("h_s", "a_s"):
        late, now = lazy.moments[name].spatial.corr, eager.moments[name].spatial.corr
        np.testing.assert_array_equal(late.rho, now.rho, err_msg=name)
        np.testing.assert_array_equal(late.floor, now.floor, err_msg=name)
        assert late.energy_pairs == now.energy_pairs
        if now.centred is None:
            assert late.centred is None
        else:
            np.testing.assert_array_equal(late.centred, now.centred, err_msg=name)
