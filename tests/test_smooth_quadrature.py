"""``rules.smooth_quadrature``: a smooth chain's moments and Hermite amplitudes from one
evaluation, against the two rules it stands in for (``gaussian_moments`` and
``mehler.hermite_amplitudes``, each evaluating the function on its own), and a model whose
SiLU layers on position classes no longer run the amplitudes' quadrature."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxinit
from onnxinit import mehler, special
from onnxinit.rules import smooth_quadrature
from onnxinit.rules.gaussian import gaussian_moments, quadrature
from tests.models import make_model

SLOPES = np.array([0.5, 1.0, 2.0]).reshape(1, 3, 1, 1)  # a per-channel constant in the chain


@pytest.mark.parametrize("fn", [special.expit, lambda x: x * special.expit(x), np.tanh,
                                lambda x: np.tanh(SLOPES * x - 1.0)])
def test_matches_the_two_separate_rules(fn):
    rng = np.random.default_rng(0)
    mean = rng.normal(0, 1.5, (1, 3, 5, 4))
    var = rng.uniform(0.0, 3.0, (1, 3, 5, 4))
    e, v = gaussian_moments(fn, mean, var, smooth=True)
    amp = mehler.hermite_amplitudes(fn, mean, np.sqrt(var), *quadrature(True))
    got = smooth_quadrature.moments_and_amplitudes(fn, mean, var)
    assert got is not None and got[2].shape == (8, 1, 3, 5, 4)
    sd = np.sqrt(v)
    np.testing.assert_allclose(got[0], e, rtol=0, atol=1e-13 * (np.abs(e) + sd).max())
    np.testing.assert_allclose(got[1], v, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(got[2], amp, rtol=0, atol=1e-13 * sd.max())


def test_a_function_not_finite_on_the_gaussian_is_left_to_the_rules():
    mean, var = np.full((1, 2, 3, 3), 0.5), np.ones((1, 2, 3, 3))
    assert smooth_quadrature.moments_and_amplitudes(np.log, mean, var) is None


def _silu_conv_net(seed: int = 0):
    """Conv 3x3 (padded: position classes, a spatial correlation) -> x * Sigmoid(x), twice."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(2):
        w = (rng.standard_normal((4, 4 if i else 3, 3, 3)) / np.sqrt(27)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Sigmoid", [f"c{i}"], [f"s{i}"]),
                  helper.make_node("Mul", [f"c{i}", f"s{i}"], [f"y{i}"])]
        x = f"y{i}"
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
                      [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)


def test_silu_layers_take_their_amplitudes_from_the_moment_rule(monkeypatch, tmp_path):
    path = tmp_path / "silu.onnx"
    onnx.save(_silu_conv_net(), path)
    calls = []
    quadrature_amplitudes = mehler.hermite_amplitudes
    monkeypatch.setattr(mehler, "hermite_amplitudes",
                        lambda *a, **k: calls.append(1) or quadrature_amplitudes(*a, **k))
    joint = onnxinit.analyze(str(path))
    assert calls == []  # Sigmoid's and the fused SiLU's amplitudes came with their moments
    # the two separate rules give the same analysis
    monkeypatch.setattr(smooth_quadrature, "smooth_moments", lambda *a: None)
    monkeypatch.setattr("onnxinit.rules.elementwise.smooth_moments", lambda *a: None)
    separate = onnxinit.analyze(str(path))
    assert len(calls) == 4
    assert [t.name for t in joint.tensors] == [t.name for t in separate.tensors]
    for a, b in zip(joint.tensors, separate.tensors):
        assert a.var == pytest.approx(b.var, rel=1e-12)
        assert a.mean == pytest.approx(b.mean, rel=1e-12, abs=1e-14 * np.sqrt(b.var))


def test_sigmoid_is_scipys_expit_to_an_ulp():
    from onnxinit.rules.activations import _sigmoid

    x = np.concatenate([np.linspace(-800, 800, 200_001), [np.inf, -np.inf, 0.0]])
    got, expected = _sigmoid(x), special.expit(x)
    np.testing.assert_allclose(got, expected, rtol=1e-15, atol=0)
    assert np.isnan(_sigmoid(np.array([np.nan])))[0]
    assert _sigmoid(np.ones(3, np.float32)).dtype == np.float32


def test_no_cells_is_left_to_the_rules():
    assert smooth_quadrature.moments_and_amplitudes(np.tanh, np.zeros((1, 0, 3)),
                                                    np.ones((1, 0, 3))) is None
