"""rules.hermite.coefficients without the remainder (``remainder=False``: the channel
covariance's Mehler terms read the coefficients alone): the same coefficients, bit for bit,
and no second moment computed. Oracle for the coefficients: ``E[f(z) He_n(xi)] / sqrt(n!)``
by a fine trapezoid rule in float64."""

from __future__ import annotations

from math import factorial

import numpy as np

from onnxinit.rules import hermite


def _oracle(fn, mean: float, std: float, n: int) -> float:
    xi = np.linspace(-12, 12, 400001)
    density = np.exp(-0.5 * xi**2) / np.sqrt(2 * np.pi)
    he = [np.ones_like(xi), xi.copy()]
    for k in range(1, n):
        he.append(xi * he[-1] - k * he[-2])
    return float(np.trapezoid(fn(mean + std * xi) * he[n] * density, xi) / np.sqrt(factorial(n)))


def test_coefficients_without_the_remainder_are_the_same_bits():
    rng = np.random.default_rng(0)
    mean, var = rng.normal(size=40), rng.uniform(0.1, 3.0, size=40)
    for fn, smooth in ((np.tanh, True), (lambda x: np.maximum(x, 0.0), False)):
        c, rest = hermite.coefficients(fn, mean, var, smooth=smooth)
        c2, none = hermite.coefficients(fn, mean, var, smooth=smooth, remainder=False)
        assert none is None and rest is not None
        assert c2.tobytes() == c.tobytes()
        for n in (0, 1, 2, 5):
            assert abs(c2[n, 3] - _oracle(fn, mean[3], np.sqrt(var[3]), n)) < 2e-3


def test_the_channel_covariance_does_not_compute_a_remainder(monkeypatch):
    """The field's walk through a ReLU (the sample ResNet-20 without norm: 1x1 shortcut Convs
    read their input's field) asks for the coefficients alone, and the analysis is the one
    with the remainder computed."""
    from pathlib import Path

    from onnxinit import analyze
    from onnxinit.rules import channel_covariance

    model = Path(__file__).resolve().parents[2] / "sample_models" / "resnet20_nobn.onnx"
    before = [(t.name, t.mean, t.var) for t in analyze(model, batch_size=8).tensors]
    asked = []
    inner = hermite.coefficients

    def recorded(*args, **kwargs):
        asked.append(kwargs.get("remainder", True))
        return inner(*args, **kwargs)

    def with_remainder(*args, **kwargs):
        kwargs.pop("remainder", None)
        return inner(*args, **kwargs)

    monkeypatch.setattr(channel_covariance, "coefficients", recorded)
    after = [(t.name, t.mean, t.var) for t in analyze(model, batch_size=8).tensors]
    assert asked and not any(asked)
    monkeypatch.setattr(channel_covariance, "coefficients", with_remainder)
    full = [(t.name, t.mean, t.var) for t in analyze(model, batch_size=8).tensors]
    assert after == full == before
