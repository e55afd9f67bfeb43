"""``mehler.hermite_amplitudes`` (blocked, one matrix product) against the sum written
from its formula, ``a_n = sum_i w_i He_n(z_i) (f(m + s z_i) - E[f])``, and against a fine-grid
integral for a smooth and a kinked function."""

from __future__ import annotations

import numpy as np
import pytest

from onnxinit import mehler
from onnxinit.rules.correlations import _W, _Z
from onnxinit.rules.gaussian import quadrature


def _formula(fn, mean, std, nodes, weights):
    """The sum as written: every node at once, centred first, one He_n at a time."""
    shape = np.broadcast_shapes(np.shape(mean), np.shape(std))
    z = nodes.reshape((-1,) + (1,) * len(shape))
    w = weights.reshape(z.shape)
    with np.errstate(all="ignore"):
        values = np.asarray(fn(mean + std * z), dtype=np.float64)
    values = np.where(np.isfinite(values), values, 0.0)
    values = values - (w * values).sum(axis=0)
    he_prev, he = np.ones_like(z), z
    out = []
    for k in range(1, 9):
        out.append((w * values * he).sum(axis=0))
        he_prev, he = he, z * he - k * he_prev
    return np.stack(out)


def _hardswish(x):
    return x * np.clip(x / 6 + 0.5, 0, 1)


SLOPES = np.array([0.5, 1.0, 2.0]).reshape(1, 3, 1, 1)  # a per-channel constant in the chain


@pytest.mark.parametrize("fn", [np.tanh, _hardswish, lambda x: np.log(x),
                                lambda x: np.maximum(SLOPES * x, 0) + 100.0])
@pytest.mark.parametrize("smooth", [True, False])
def test_matches_the_formula(fn, smooth, monkeypatch):
    rng = np.random.default_rng(0)
    mean = rng.normal(0, 2, (1, 3, 5, 4))
    std = rng.uniform(0.0, 2.0, (1, 3, 1, 4))
    nodes, weights = quadrature(True) if smooth else (_Z, _W)
    expected = _formula(fn, mean, std, nodes, weights)
    monkeypatch.setattr(mehler, "_NODE_BLOCK", 200)  # several blocks of nodes
    got = mehler.hermite_amplitudes(fn, mean, std, nodes, weights)
    assert got.shape == expected.shape == (8, 1, 3, 5, 4)
    scale = np.abs(expected).max(axis=0, keepdims=True) + 1e-12 * std
    np.testing.assert_allclose(got / scale, expected / scale, atol=1e-11)


def test_a_fine_grid_integral_agrees():
    z = np.linspace(-12, 12, 400_001)  # the formula's sum on a fine grid: the integral
    density = np.exp(-0.5 * z**2) / np.sqrt(2 * np.pi) * (z[1] - z[0])
    for m, s in [(0.3, 1.2), (-2.0, 3.0)]:
        expected = _formula(_hardswish, np.array(m), np.array(s), z, density)
        got = mehler.hermite_amplitudes(_hardswish, np.array(m), np.array(s), _Z, _W)
        # the composite rule itself is accurate to about 2e-4 of the largest amplitude
        np.testing.assert_allclose(got, expected, atol=1e-3 * np.abs(expected).max())


@pytest.mark.parametrize("lo,hi", [(0.0, 6.0), (-np.inf, 2.0), (-1.0, np.inf)])
def test_clip_amplitudes_in_closed_form(lo, hi):
    # Clip is piecewise linear (rules/piecewise.py; ReLU6 is Keras' and MobileNetV2's
    # activation): against a 2e6-point float64 grid integral to 1e-8; the composite quadrature
    # it replaces was 1.3e-3 off for ReLU6
    from numpy.polynomial.hermite_e import hermeval

    from onnxinit.rules.piecewise import chain_pieces

    mean = np.array([-1.0, 0.5, 3.0, 7.0])
    std = np.array([0.5, 1.0, 2.0, 1.5])
    z = np.linspace(-12, 12, 2_000_001)
    pdf = np.exp(-z * z / 2) / np.sqrt(2 * np.pi) * (z[1] - z[0])
    grid = np.stack([
        [(np.clip(m + s * z, lo, hi) * hermeval(z, [0] * n + [1]) * pdf).sum()
         for m, s in zip(mean, std)] for n in range(1, 9)])
    pieces = chain_pieces([("Clip", lo, hi)])
    np.testing.assert_allclose(mehler.piecewise_hermite_amplitudes(pieces, mean, std), grid,
                               atol=1e-8)


def test_written_out_hardswish_in_closed_form():
    # tf2onnx's HardSwish, x * (Relu6(x + 3) * (1/6)), fused (rules/fusion.py) into one
    # piecewise-quadratic function: its moments and amplitudes against the grid integral
    from numpy.polynomial.hermite_e import hermeval

    from onnxinit.rules.piecewise import chain_pieces, closed_moments

    key = ("Fused", "Mul", (), (("Affine", "add", 3.0), ("Clip", 0.0, 6.0),
                               ("Affine", "mul", 1 / 6)))
    pieces = chain_pieces([key])
    mean = np.array([-5.0, -1.0, 0.0, 0.5, 3.0])
    std = np.array([0.3, 0.5, 1.0, 2.0, 1.5])
    z = np.linspace(-12, 12, 2_000_001)
    pdf = np.exp(-z * z / 2) / np.sqrt(2 * np.pi) * (z[1] - z[0])
    values = [_hardswish(m + s * z) for m, s in zip(mean, std)]
    grid = np.stack([[(v * hermeval(z, [0] * n + [1]) * pdf).sum() for v in values]
                     for n in range(1, 9)])
    np.testing.assert_allclose(mehler.piecewise_hermite_amplitudes(pieces, mean, std), grid,
                               atol=1e-8)
    e, var = closed_moments(pieces)(mean, std**2)
    np.testing.assert_allclose(e, [(v * pdf).sum() for v in values], atol=1e-9)
    np.testing.assert_allclose(var, [(v * v * pdf).sum() - (v * pdf).sum() ** 2 for v in values],
                               atol=1e-9)


@pytest.mark.parametrize("slope", [0.0, 0.2])
@pytest.mark.parametrize("shape", [(1, 64, 32, 32), (1, 3, 5, 7), (1, 200, 7, 7)])
def test_class_means_by_channel_blocks_equal_the_whole_arrays_average(slope, shape):
    """leaky_hermite_class_means (blocks of channels, the kink on the whole) gives every
    channel's class average bit for bit as averaging the whole array's amplitudes, constants
    (std 0) and infinite kinks included."""
    rng = np.random.default_rng(1)
    mean = rng.normal(size=shape)
    std = rng.uniform(0.1, 2.0, size=shape)
    weights = rng.uniform(size=shape[2:])
    weights /= weights.sum()
    for s in (std, np.where(rng.uniform(size=shape) < 0.05, 0.0, std)):
        amp = mehler.leaky_hermite_amplitudes(slope, mean, s)
        whole = (amp[:, 0] * weights).reshape(8, shape[1], -1).sum(axis=-1)
        np.testing.assert_array_equal(mehler.leaky_hermite_class_means(slope, mean, s, weights),
                                      whole)
