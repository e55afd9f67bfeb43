"""Rules that work in cache-sized blocks (or skip a copy) compute every value as the whole-array
form does: the blocks are a schedule, not an approximation. Each test runs the blocked form
against one block holding everything (or the copy made), and checks the result bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from onnxinit import spatial
from onnxinit.moments import Moments
from onnxinit.rules import covariance_maps, gaussian


@pytest.mark.parametrize("shape, mu_shape", [((1, 64, 16, 16), (1, 64, 16, 16)),
                                             ((3, 1, 40, 7, 7), (3, 1, 40, 1, 1)),
                                             ((5000,), ())])
def test_relu_parts_blocks(monkeypatch, shape, mu_shape):
    rng = np.random.default_rng(0)
    mu = rng.standard_normal(mu_shape) * 2
    s = np.abs(rng.standard_normal(shape))
    s[..., :3] = 0.0  # points: a = +-inf
    mu = np.broadcast_to(mu, mu_shape)  # read-only, as a broadcast view reaches the rule
    monkeypatch.setattr(gaussian, "_PARTS_WHOLE", 1 << 40)
    whole = gaussian.relu_parts(mu, s)
    monkeypatch.setattr(gaussian, "_PARTS_WHOLE", 0)
    monkeypatch.setattr(gaussian, "_PARTS_BLOCK", 100)
    blocked = gaussian.relu_parts(mu, s)
    for a, b in zip(whole, blocked):
        assert a.shape == b.shape and a.tobytes() == b.tobytes()
    from scipy import integrate, stats

    flat_mu = np.broadcast_to(mu, shape).reshape(-1)
    flat_s, m1, m2 = s.reshape(-1), whole[0].reshape(-1), whole[1].reshape(-1)
    for i in (0, 5, 17):  # a point and two Gaussians against quadrature of the density
        if flat_s[i] == 0:
            assert m1[i] == max(flat_mu[i], 0.0) and m2[i] == max(flat_mu[i], 0.0) ** 2
            continue
        law = stats.norm(flat_mu[i], flat_s[i])
        hi = flat_mu[i] + 12 * flat_s[i]
        assert m1[i] == pytest.approx(integrate.quad(lambda x: x * law.pdf(x), 0, hi)[0],
                                      rel=1e-7, abs=1e-12)
        assert m2[i] == pytest.approx(integrate.quad(lambda x: x * x * law.pdf(x), 0, hi)[0],
                                      rel=1e-7, abs=1e-12)


def test_mehler_rows(monkeypatch):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((300, 300))
    s_x = a @ a.T / 300
    amp = rng.standard_normal((9, 300))
    nu = rng.uniform(0.5, 2.0, 300)
    monkeypatch.setattr(covariance_maps, "_ROWS_BLOCK", 1 << 40)
    whole = covariance_maps.mehler(s_x, amp, nu)
    monkeypatch.setattr(covariance_maps, "_ROWS_BLOCK", 700)  # two rows a block
    blocked = covariance_maps.mehler(s_x, amp, nu)
    assert whole.tobytes() == blocked.tobytes()
    sd = np.sqrt(np.diag(s_x))
    rho = s_x / np.outer(sd, sd)
    expected = np.outer(amp[1], amp[1]) * rho + np.outer(amp[2], amp[2]) * rho**2
    np.fill_diagonal(expected, nu)
    assert np.allclose(whole, expected, rtol=1e-12, atol=1e-14)


def test_take_cells_in_order_is_a_take():
    rng = np.random.default_rng(2)
    mean, var = rng.standard_normal((1, 4, 5, 6)), rng.uniform(size=(1, 4, 5, 6))
    mixture = tuple(rng.standard_normal((3, 1, 4, 5, 6)) for _ in range(3))
    cells = Moments(mean, var, None, mixture)
    for selection in ([np.arange(5), np.arange(6)], [np.array([0, 2, 4]), np.arange(6)],
                      [np.arange(5), np.array([5, 4, 3, 2, 1, 0])]):
        got = spatial.take_cells(cells, selection)
        want = [np.take(np.take(a, selection[0], axis=-2), selection[1], axis=-1)
                for a in (mean, var, *mixture)]
        for a, b in zip([got.mean, got.var, *got.mixture], want):
            assert a.tobytes() == b.tobytes()
