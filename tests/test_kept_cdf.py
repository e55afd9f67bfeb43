"""The ReLU's closed forms share one CDF evaluation (``onnxinit.kept_cdf``) and take a shorter
path when every cell is a proper Gaussian: the same bits as the general path."""

from __future__ import annotations

import numpy as np

from onnxinit import mehler, special
from onnxinit.kept_cdf import ndtr_kept
from onnxinit.rules.gaussian import relu_parts


def test_the_kept_cdf_is_scipys_for_a_new_argument_and_a_mutated_one():
    x = np.random.default_rng(0).normal(size=(3, 50))
    first = ndtr_kept(x)
    assert first.tobytes() == special.ndtr(x).tobytes()
    assert ndtr_kept(x.copy()) is first  # the same cells: kept
    x[1] += 0.5  # the caller's array changed in place: computed again
    assert ndtr_kept(x).tobytes() == special.ndtr(x).tobytes()
    assert not first.flags.writeable


def test_relu_amplitudes_take_the_same_values_on_the_short_and_the_general_path():
    rng = np.random.default_rng(1)
    mean, std = rng.normal(size=200) * 3, rng.uniform(0.01, 4, size=200)
    for slope in (0.0, 0.1):
        short = mehler.leaky_hermite_amplitudes(slope, mean, std)
        # a constant cell (std 0) sends the whole array down the general path
        general = mehler.leaky_hermite_amplitudes(slope, np.append(mean, 1.0),
                                                  np.append(std, 0.0))
        assert short.tobytes() == np.ascontiguousarray(general[:, :-1]).tobytes()
        assert np.all(general[:, -1] == 0)


def test_relu_moments_then_amplitudes_of_the_same_cells_match_fresh_ones():
    rng = np.random.default_rng(2)
    mean, std = rng.normal(size=(4, 30)), rng.uniform(0.1, 2, size=(4, 30))
    relu_parts(mean, std)  # keeps Phi(mean / std)
    after = mehler.leaky_hermite_amplitudes(0.0, mean, std)
    relu_parts(mean + 1.0, std)  # another argument kept
    fresh = mehler.leaky_hermite_amplitudes(0.0, mean, std)
    assert after.tobytes() == fresh.tobytes()


def test_the_relu_moments_keep_the_density_the_amplitudes_compute():
    """relu_parts keeps phi(mean / std) with the CDF; the amplitudes read it back (the same
    object), and it holds the bits of the amplitudes' own formula ``exp(-0.5 a^2) /
    sqrt(2 pi)`` at ``a = -mean / std``; another argument since leaves nothing to read."""
    from onnxinit import kept_cdf

    rng = np.random.default_rng(3)
    for shape in ((7,), (1, 16, 9, 9), (1, 64, 33, 31)):
        mean, std = rng.normal(size=shape) * 2, rng.uniform(0.05, 3, size=shape)
        relu_parts(mean, std)
        cdf = ndtr_kept(mean / std)
        pdf = kept_cdf.kept_density(cdf)
        assert pdf is not None and not pdf.flags.writeable
        a0 = -(mean / std)
        assert pdf.tobytes() == (np.exp(-0.5 * a0**2) / np.sqrt(2 * np.pi)).tobytes()
        ndtr_kept(mean / std + 1.0)  # another argument: its CDF kept without a density
        assert kept_cdf.kept_density(ndtr_kept(mean / std + 1.0)) is None
        assert kept_cdf.kept_density(cdf) is None


def test_the_density_is_read_by_the_amplitudes(monkeypatch):
    """After relu_parts of the same cells, the amplitudes do not evaluate the density again
    (no exponential), and their values are those of a fresh evaluation."""
    rng = np.random.default_rng(4)
    mean, std = rng.normal(size=(1, 8, 5, 5)), rng.uniform(0.1, 2, size=(1, 8, 5, 5))
    fresh = mehler.leaky_hermite_amplitudes(0.0, mean, std)
    relu_parts(mean, std)
    calls = []
    exp = np.exp

    class Counted:
        def __getattr__(self, name):
            if name == "exp":
                def counted(*args, **kwargs):
                    calls.append(1)
                    return exp(*args, **kwargs)
                return counted
            return getattr(np, name)

    monkeypatch.setattr(mehler, "np", Counted())
    kept = mehler.leaky_hermite_amplitudes(0.0, mean, std)
    assert calls == []
    assert kept.tobytes() == fresh.tobytes()
